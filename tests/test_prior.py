"""The tiny LDM prior: a loadable pipeline folder, resume after interruption (incl. SIGKILL),
determinism, checkpoint utilities, and the shipped trained prior (hashes, not-noise sample)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dginstyle.data import minicity
from dginstyle.diffusion import layouts, models, prior, training
from dginstyle.io import DataError

TINY = models.TinySpec(
    vae_channels=(16, 16, 16),
    unet_channels=(16, 32, 32),
    unet_attention_head_dim=8,
    norm_groups=8,
    text_hidden=32,
    text_layers=1,
    text_heads=2,
    max_tokens=16,
)
TINY_ARGS = dict(resolution=32, batch_size=4, vae_batch_size=4, learning_rate=1e-3, seed=3, threads=1, spec=TINY, checkpoint_every=2)
WEIGHTS = ("vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from dginstyle.data.prepare import prepare

    out = tmp_path_factory.mktemp("prior") / "corpus"
    prepare(fmt="minicity", out=out, splits="train=16", domain="prior", seed=0, size="32x32", workers=1)
    return out


def _digests(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in WEIGHTS}


@pytest.fixture(scope="module")
def tiny_run(corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    meta = prior.pretrain_prior(corpus, root / "out", root / "ck", vae_steps=3, unet_steps=4, samples=root / "grid.png", **TINY_ARGS)
    return root, meta


def test_pipeline_folder_loads_with_metadata(tiny_run):
    root, meta = tiny_run
    comps = models.load_components(root / "out")
    assert set(comps) >= {"vae", "text_encoder", "tokenizer", "unet", "scheduler"}
    saved = models.read_metadata(root / "out")
    assert saved["kind"] == "prior" and saved["steps"] == {"vae": 3, "unet": 4}
    assert saved["corpus"]["dataset"] == "corpus" and saved["corpus"]["seed"] == 0
    assert saved["hyperparameters"]["unet_steps"] == 4 and saved["spec"]["unet_channels"] == [16, 32, 32]
    assert comps["vae"].config.scaling_factor == pytest.approx(saved["scaling_factor"])
    assert saved["scaling_factor"] > 0 and saved["final_losses"]["unet_mse"] > 0
    assert comps["unet"].config.sample_size == 32 // 4
    assert type(comps["scheduler"]).__name__ == "DDIMScheduler"
    assert (root / "grid.png").stat().st_size > 0
    images = prior.generate(comps, ["a photo of a city street, in foggy weather"], [0], steps=2, height=32, width=32)
    assert images.shape == (1, 3, 32, 32) and torch.isfinite(images).all()
    assert not list((root).glob(".out*")), "no staging leftovers"


def test_trained_vae_posterior_is_a_point_mass(tiny_run, corpus):
    """Sampling the trained VAE's posterior gives its mean, so fine-tune, ControlNet and MRLF
    (which call latent_dist.sample()) see the latents the prior was trained on."""
    root, meta = tiny_run
    vae = models.load_components(root / "out")["vae"]
    images, _, _ = prior.load_corpus(corpus)
    with torch.no_grad():
        dist = vae.encode(prior._to_unit(images[:2])).latent_dist
    assert float(dist.std.max()) < 1e-6
    assert torch.allclose(dist.sample(generator=torch.Generator().manual_seed(0)), dist.mean, atol=1e-5)
    assert meta["hyperparameters"]["vae_crop"] == 32 and "colour" in meta["hyperparameters"]["vae_loss"]


def test_reconstruction_loss_weights_colour_errors():
    grey = torch.zeros(1, 3, 4, 4)
    tinted = grey + torch.tensor([0.1, -0.1, 0.0]).view(1, 3, 1, 1)  # same brightness, other colour
    brighter = grey + 0.1  # same colour, other brightness
    assert prior.reconstruction_loss(tinted, grey) > 2 * prior.reconstruction_loss(brighter, grey)


def test_resume_with_more_steps_continues(corpus, tiny_run, tmp_path):
    root, _ = tiny_run
    shutil.copytree(root / "ck", tmp_path / "ck")
    meta = prior.pretrain_prior(corpus, tmp_path / "out", tmp_path / "ck", vae_steps=3, unet_steps=6, **TINY_ARGS)
    assert meta["resumed_from"] == {"vae": 3, "unet": 4}
    assert meta["steps"] == {"vae": 3, "unet": 6}
    assert training.checkpoint_steps(tmp_path / "ck" / "unet") == [4, 6]  # keep last 2


def test_same_seed_gives_identical_weights(corpus, tiny_run, tmp_path):
    root, _ = tiny_run
    prior.pretrain_prior(corpus, tmp_path / "out", tmp_path / "ck", vae_steps=3, unet_steps=4, **TINY_ARGS)
    assert _digests(tmp_path / "out") == _digests(root / "out")


def test_sigkill_mid_training_then_rerun(corpus, tmp_path):
    out, ck = tmp_path / "out", tmp_path / "ck"
    argv = ["pretrain-prior", "--corpus", str(corpus), "--out", str(out), "--checkpoints", str(ck), "--resolution", "32",
            "--vae-steps", "2", "--unet-steps", "400", "--batch-size", "2", "--vae-batch-size", "2", "--checkpoint-every", "2"]
    code = f"import sys; from dginstyle.diffusion import prior, models; prior.PRIOR_SPEC.update({TINY.__dict__!r}); sys.exit(prior.main({argv!r}))"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 40
        while time.time() < deadline and proc.poll() is None and len(training.checkpoint_steps(ck / "unet")) < 1:
            time.sleep(0.05)
        assert proc.poll() is None, "training ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not out.exists()
    killed_at = training.checkpoint_steps(ck / "unet")[-1]
    assert 0 < killed_at < 400
    # rerun (in-process, same settings and spec): continues from the checkpoint, short remainder
    spec = models.TinySpec(**TINY.__dict__)
    meta = prior.pretrain_prior(corpus, out, ck, resolution=32, vae_steps=2, unet_steps=killed_at + 4, batch_size=2, vae_batch_size=2,
                                checkpoint_every=2, threads=1, spec=spec)
    assert meta["resumed_from"]["vae"] == 2
    assert meta["steps"] == {"vae": 2, "unet": killed_at + 4}
    assert models.read_metadata(out)["steps"]["unet"] == killed_at + 4
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".partial")]


def test_cli_parser_registers_subcommand(tmp_path):
    parser = argparse.ArgumentParser()
    prior.add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["pretrain-prior", "--corpus", "c", "--out", "o", "--checkpoints", "k", "--unet-steps", "7", "--samples", "s.png"])
    assert args.unet_steps == 7 and args.samples == Path("s.png") and args.device == "auto" and callable(args.handler)


def test_checkpoint_roundtrip_and_partial_ignored(tmp_path):
    module = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(module.parameters())
    module(torch.ones(1, 3)).sum().backward()
    opt.step()
    gen = torch.Generator().manual_seed(5)
    for step in (1, 2, 3):
        training.save_checkpoint(tmp_path, step, {"m": module}, {"o": opt}, training.capture_rng_state({"g": gen}), {"x": step})
    (tmp_path / ".step_00000009.partial").mkdir()  # a killed save
    assert training.checkpoint_steps(tmp_path) == [2, 3]
    ckpt = training.load_latest_checkpoint(tmp_path)
    assert ckpt["step"] == 3 and ckpt["extra"] == {"x": 3}
    assert torch.equal(ckpt["modules"]["m"]["weight"], module.weight)
    expected = torch.rand(2, generator=gen)
    gen2 = torch.Generator()
    training.restore_rng_state(ckpt["rng_state"], {"g": gen2})
    assert torch.equal(torch.rand(2, generator=gen2), expected)
    opt2 = torch.optim.AdamW(module.parameters())
    opt2.load_state_dict(ckpt["optimizers"]["o"])
    assert training.load_latest_checkpoint(tmp_path / "none") is None


def test_missing_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="captions.jsonl"):
        prior.pretrain_prior(tmp_path, tmp_path / "out", tmp_path / "ck", spec=TINY, vae_steps=1, unet_steps=1)


# ----------------------------------------------------------------------------- the shipped prior

shipped = pytest.mark.skipif(not (prior.shipped_prior_path() / "SHA256SUMS").is_file(), reason="no shipped prior in this checkout")


@shipped
def test_shipped_prior_matches_hashes_and_tamper_is_named(tmp_path):
    prior.verify_shipped_prior()
    copy = tmp_path / "prior"
    shutil.copytree(prior.shipped_prior_path(), copy)
    target = copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 1
    target.write_bytes(bytes(data))
    with pytest.raises(DataError, match="unet/diffusion_pytorch_model.safetensors"):
        prior.verify_shipped_prior(copy)


@shipped
def test_shipped_prior_follows_the_weather_words():
    """The shipped prior learned its captions as the corpus shows them, for the same seeds: fog
    brightens and washes out the detail along a row, night darkens, and a sunny street has
    vertical structure (sky above, road below). The corpus's own photos (seed 0, left 64 px):
    brightness sunny 0.41, foggy 0.60, night 0.18; spread along a row sunny 0.093, foggy 0.044."""
    torch.set_num_threads(1)
    comps = models.load_components(prior.shipped_prior_path())
    assert comps["unet"].dtype == torch.float32
    assert models.read_metadata(prior.shipped_prior_path())["kind"] == "prior"
    weathers = ("sunny", "foggy", "night")
    prompts = [f"a photo of a city street with car, in {w} weather" for w in weathers for _ in (0, 1)]
    images = prior.generate(comps, prompts, [0, 1] * len(weathers), steps=10, height=64, width=64)
    stats = {}
    for i, weather in enumerate(weathers):
        pair = images[2 * i : 2 * i + 2]
        grey = pair.mean(1)
        stats[weather] = {"mean": float(pair.mean()), "along_row": float(grey.std(2).mean()), "rows": float(grey.mean(2).std(1).mean())}
    assert stats["foggy"]["along_row"] < 0.6 * stats["sunny"]["along_row"], stats
    assert stats["foggy"]["mean"] > stats["sunny"]["mean"] + 0.1, stats
    assert stats["night"]["mean"] < 0.6 * stats["sunny"]["mean"], stats
    assert stats["sunny"]["rows"] > 0.02, stats


def test_shipped_prior_is_installed_only_for_the_request_it_was_trained_on(tiny_run, tmp_path, monkeypatch):
    """The install_prior rule is planned only for the corpus and settings the shipped prior was
    trained on (asking reads, never writes); installing copies it with its checksums checked,
    and another package's prior gets another params value (so the rule runs again)."""
    root, meta = tiny_run
    shipped = tmp_path / "assets" / "prior"
    prior.export_shipped(root / "out", shipped)
    monkeypatch.setattr(prior, "shipped_prior_path", lambda: shipped)
    corpus = {"domain": "prior", "splits": {"train": 16}, "seed": 0, "size": [32, 32], "world_version": minicity.WORLD_VERSION}
    training = {"vae_steps": 3, "unet_steps": 4, "batch_size": 4, "vae_batch_size": 4, "vae_crop": 32, "vae_learning_rate": 2e-3,
                "learning_rate": 1e-3, "seed": 3, "prediction_type": prior.DEFAULTS["prediction_type"], "checkpoint_every": 99}
    request = prior.training_request(corpus, 32, training)
    before = _digests(shipped)

    other = prior.training_request(corpus, 32, {**training, "unet_steps": 5})
    assert prior.shipped_prior_matches(request)
    assert not prior.shipped_prior_matches(other)
    # A corpus drawn with a thin-object minimum is another corpus; 0 is world version 1's drawing.
    assert prior.training_request({**corpus, "thin_objects_px": 0}, 32, training) == request
    assert not prior.shipped_prior_matches(prior.training_request({**corpus, "thin_objects_px": 3}, 32, training))
    with pytest.raises(DataError, match="not trained on this request"):
        prior.install_shipped_prior(tmp_path / "a", other)
    assert not (tmp_path / "a").exists()

    dest = tmp_path / "results" / "prior"
    prior.install_shipped_prior(dest, request)
    assert _digests(dest) == before
    assert models.read_metadata(dest)["installed_from_shipped"] is True
    assert models.read_metadata(dest)["request"] == request
    prior.install_shipped_prior(dest, request)  # a rerun replaces its own folder
    assert _digests(shipped) == before  # the package is only read

    first = prior.shipped_prior_id()
    from safetensors.torch import load_file, save_file

    retrained = tmp_path / "retrained"
    shutil.copytree(root / "out", retrained)
    weights = retrained / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    save_file({k: v + 0.01 for k, v in state.items()}, weights)
    prior.export_shipped(retrained, shipped)
    assert prior.shipped_prior_id() != first

    # A corrupt shipped weight file is named, and nothing is installed.
    (shipped / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"broken")
    with pytest.raises(DataError, match="diffusion_pytorch_model.safetensors"):
        prior.install_shipped_prior(tmp_path / "b", request)
    assert not (tmp_path / "b").exists()


def test_tokenizer_spells_every_caption_and_prompt_word_as_one_token(tmp_path):
    # Words sharing letters with earlier ones ("street" after "traffic", "train" after
    # "traffic") used to fall apart into characters: each must be one token.
    captions = ["a photo of a city street with trees, in rainy weather", "a sketch of a street scene, night"]
    words = models.caption_words(captions + layouts.prompt_vocabulary())
    tokenizer = models.build_tokenizer(words, tmp_path, 77)
    split = [w for w in words if len(tokenizer(w, add_special_tokens=False).input_ids) != 1]
    assert split == []
    longest = layouts.make_prompt(list(range(19)), "foggy")
    ids = tokenizer(longest).input_ids
    assert len(ids) <= 77 and tokenizer.convert_ids_to_tokens(ids)[-4:-1] == ["foggy</w>", "weather</w>", ".</w>"]
    assert prior.PRIOR_SPEC["max_tokens"] >= len(ids)


def test_random_crops_draw_from_every_set_by_image_count():
    """The VAE's batches mix the corpus and its extra set (other image sizes allowed), each
    image equally likely: a set of twice the images gives about twice the crops."""
    small = torch.zeros(20, 3, 32, 48, dtype=torch.uint8)
    large = torch.full((10, 3, 40, 40), 255, dtype=torch.uint8)
    crops = prior._random_crops([small, large], 600, 32, torch.Generator().manual_seed(0))
    assert crops.shape == (600, 3, 32, 32)
    from_large = int((crops.flatten(1).float().mean(1) == 255).sum())
    assert 150 < from_large < 250, from_large  # expected 200 of 600
    same = prior._random_crops([small, large], 8, 32, torch.Generator().manual_seed(1))
    assert torch.equal(same, prior._random_crops([small, large], 8, 32, torch.Generator().manual_seed(1)))


@pytest.fixture(scope="module")
def game_images(tmp_path_factory) -> Path:
    from dginstyle.data.prepare import prepare

    out = tmp_path_factory.mktemp("game") / "mini_game"
    prepare(fmt="minicity", out=out, splits="train=6", domain="game", seed=0, size="48x32", workers=1)
    return out


def test_vae_extra_corpus_is_recorded_and_matches_its_request(corpus, game_images, tiny_run, tmp_path):
    """A prior whose VAE also saw the source images records that set; its record equals the
    config's request with that set (so the shipped copy installs) and differs without it; the
    VAE stage does not resume from a checkpoint trained without it."""
    root, plain = tiny_run
    shutil.copytree(root / "ck", tmp_path / "ck")
    meta = prior.pretrain_prior(corpus, tmp_path / "out", tmp_path / "ck", vae_steps=3, unet_steps=4, vae_extra_corpus=game_images, **TINY_ARGS)
    assert meta["resumed_from"]["vae"] is None  # other training data: trained afresh
    extra = meta["vae_extra_corpus"]
    assert extra["images"] == 6 and extra["domain"] == "game" and extra["size"] == {"width": 48, "height": 32}
    assert plain["vae_extra_corpus"] is None
    assert _digests(tmp_path / "out")[WEIGHTS[0]] != _digests(root / "out")[WEIGHTS[0]]
    corpus_spec = {"domain": "prior", "splits": {"train": 16}, "seed": 0, "size": [32, 32], "world_version": minicity.WORLD_VERSION}
    extra_spec = {"domain": "game", "splits": {"train": 6}, "seed": 0, "size": [48, 32], "world_version": minicity.WORLD_VERSION}
    training = {k: meta["hyperparameters"][k] for k in prior.recorded_request(meta)["training"]}
    assert prior.recorded_request(meta) == prior.training_request(corpus_spec, 32, training, vae_extra=extra_spec)
    assert prior.recorded_request(meta) != prior.training_request(corpus_spec, 32, training)
    assert prior.recorded_request(plain) == prior.training_request(corpus_spec, 32, {k: plain["hyperparameters"][k] for k in training})


@shipped
def test_shipped_vae_reconstructs_the_source_look(tmp_path):
    """The shipped VAE is a codec for the source too (its extra corpus): held-out game-look
    images (another world seed than it was trained on) come back with their colour and shapes.
    The VAE trained on the prior corpus alone gave them back grey and blurred (L1 0.13,
    saturation 0.63 -> 0.47); this one measured L1 0.055 and kept the saturation (0.68)."""
    from dginstyle.data.prepare import prepare

    torch.set_num_threads(1)
    meta = models.read_metadata(prior.shipped_prior_path())
    assert meta["vae_extra_corpus"]["domain"] == "game"
    out = tmp_path / "game"
    prepare(fmt="minicity", out=out, splits="train=8", domain="game", seed=7, size="128x64", workers=1)
    images = prior.load_extra_images(out)
    vae = models.load_components(prior.shipped_prior_path())["vae"]
    with torch.no_grad():
        x = prior._to_unit(images)
        y = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)

    def saturation(t):
        rgb = (t + 1) / 2
        top, low = rgb.max(1).values, rgb.min(1).values
        return float(((top - low) / top.clamp(min=1e-6)).mean())

    l1 = float((y - x).abs().mean() / 2)  # in [0, 1] units
    assert l1 < 0.08, l1
    assert saturation(y) > 0.9 * saturation(x), (saturation(y), saturation(x))


def test_velocity_target_and_its_noise_estimate_round_trip():
    """A v-prediction UNet is trained on v = sqrt(a) eps - sqrt(1 - a) x0 (diffusers'
    get_velocity) and the sampler turns its output back into the noise estimate: exact for
    the true v at every timestep; an epsilon scheduler's target is the noise itself."""
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 4, 8, 8, generator=g), torch.randn(5, 4, 8, 8, generator=g)
    t = torch.tensor([0, 100, 500, 900, 999])
    v_sched = models.noise_scheduler("ddpm", {**models.SD_SCHEDULER, "prediction_type": "v_prediction"})
    eps_sched = models.noise_scheduler("ddpm")
    a = v_sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = v_sched.add_noise(x0, eps, t)
    v = models.prediction_target(v_sched, x0, eps, t)
    torch.testing.assert_close(v, a.sqrt() * eps - (1 - a).sqrt() * x0)
    torch.testing.assert_close(models.epsilon_from_prediction(v, x_t, a, "v_prediction"), eps, rtol=1e-4, atol=1e-4)
    assert models.prediction_target(eps_sched, x0, eps, t) is eps
    assert models.epsilon_from_prediction(eps, x_t, a, "epsilon") is eps
    with pytest.raises(DataError, match="sample"):
        models.check_prediction_type(models.noise_scheduler("ddim", {**models.SD_SCHEDULER, "prediction_type": "sample"}), "here")


def test_a_velocity_prior_records_it_in_its_scheduler(corpus, tmp_path):
    meta = prior.pretrain_prior(corpus, tmp_path / "out", tmp_path / "ck", vae_steps=2, unet_steps=2, prediction_type="v_prediction", **TINY_ARGS)
    assert meta["hyperparameters"]["prediction_type"] == "v_prediction"
    assert models.load_components(tmp_path / "out")["scheduler"].config.prediction_type == "v_prediction"
    with pytest.raises(DataError, match="prediction_type"):
        prior.pretrain_prior(corpus, tmp_path / "o3", tmp_path / "ck3", vae_steps=3, unet_steps=1, prediction_type="sample", **TINY_ARGS)


def test_vae_from_takes_a_trained_vae_and_its_record(tiny_run, corpus, tmp_path):
    """`vae_from`: the UNet stage trains over another prior's VAE, unchanged, and the record
    carries that VAE's settings, losses and hash; a VAE of other widths is refused."""
    root, meta = tiny_run
    out = tmp_path / "out"
    new = prior.pretrain_prior(corpus, out, tmp_path / "ck", vae_steps=99, unet_steps=3, prediction_type="v_prediction", vae_from=root / "out", **TINY_ARGS)
    vae = "vae/diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file

    old, taken = load_file(root / "out" / vae), load_file(out / vae)
    assert old.keys() == taken.keys() and all(torch.equal(old[k], taken[k]) for k in old)
    assert new["hyperparameters"]["vae_steps"] == 3 and new["steps"]["vae"] == 3  # the source's, not the 99 asked for
    assert new["final_losses"]["vae_l1"] == meta["final_losses"]["vae_l1"]
    assert new["vae_from"]["sha256"] == hashlib.sha256((root / "out" / vae).read_bytes()).hexdigest()
    assert new["hyperparameters"]["prediction_type"] == "v_prediction" and prior.recorded_request(new)["training"]["prediction_type"] == "v_prediction"
    assert new["scaling_factor"] == pytest.approx(meta["scaling_factor"])
    assert "_name_or_path" not in json.loads((out / "vae" / "config.json").read_text())  # no path of this machine in the new prior
    wider = models.TinySpec(**{**TINY.__dict__, "vae_channels": (16, 16, 32)})
    with pytest.raises(DataError, match="does not fit"):
        prior.pretrain_prior(corpus, tmp_path / "o2", tmp_path / "ck2", vae_steps=3, unet_steps=1, vae_from=root / "out", **{**TINY_ARGS, "spec": wider})


def test_ship_prior_records_every_command_and_the_taken_vae(tiny_run, corpus, tmp_path):
    """ship-prior: fp16 weights whose hashes verify, and a README that gives each training
    command in order and names the VAE a `vae_from` prior was trained over."""
    root, _ = tiny_run
    prior.pretrain_prior(corpus, tmp_path / "out", tmp_path / "ck", vae_steps=3, unet_steps=2, prediction_type="v_prediction", vae_from=root / "out", **TINY_ARGS)
    dest = prior.ship_prior(tmp_path / "out", ["train the first prior", "train the second over its VAE"], dest=tmp_path / "shipped")
    prior.verify_shipped_prior(dest)
    from safetensors.torch import load_file

    assert all(v.dtype == torch.float16 for v in load_file(dest / "unet" / "diffusion_pytorch_model.safetensors").values())
    readme = (dest / "README.md").read_text()
    assert readme.index("train the first prior") < readme.index("train the second over its VAE")
    vae_hash = hashlib.sha256((root / "out" / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()).hexdigest()
    assert f"taken unchanged (`--vae-from`) from the prior whose VAE weights have sha256 `{vae_hash}`" in readme
    assert "predicting v_prediction" in readme
    # The corpus's prepare command is the recorded corpus's, thin-object minimum included.
    assert "prepare minicity --domain prior --splits train=16 --seed 0 --size 32x32 --out results/datasets/corpus --workers 2\n" in readme
    meta_path = tmp_path / "out" / "dginstyle.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "corpus": {**meta["corpus"], "thin_objects_px": 3.0}}))
    thin = prior.ship_prior(tmp_path / "out", "train", dest=tmp_path / "shipped_thin")
    assert "--out results/datasets/corpus --workers 2 --thin-objects-px 3\n" in (thin / "README.md").read_text()
