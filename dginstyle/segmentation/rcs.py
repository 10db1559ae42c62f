"""Rare class sampling (RCS) of the source images during segmentation training (DAFormer;
docs/method.md sections 2-3).

Each source draw picks a class c with p(c) = softmax((1 - f_c) / T) (f_c: the class's pixel
share over the source train split, T = 0.01), then uniformly an image holding more than
`min_pixels` of c (DAFormer: 3000). The statistics are the ones `prepare` wrote
(class_stats/train.json of the prepared source: per-image class pixel counts); `min_pixels`
defaults to the threshold the dataset was prepared with (prepare.rcs_min_pixels, so it scales
with the miniature world's image size). As in DAFormer, when the random crop of the drawn image
holds no more than `min_crop_ratio` x `min_pixels` pixels of c (ratio 0.5), the sample is
loaded again (new crop), at most 10 times. A ratio above 1 asks the crop for more pixels of c
than the image had to hold to be drawn: HRDA's 1024 setting uses 0.5 x 2^2 = 2.0 (its crops
come from images resized to 2560x1440, about 1.8 times GTA5's native area, while the counts
are native), i.e. more than 6000 px of c in the 1024 crop. A crop that never gets there is
used as the tenth reload left it.

Generated data keeps its plain concatenation: the sampler walks a seeded permutation of the
whole training set (source + generated) as mmengine's InfiniteSampler does, and every position
that falls on a source image is replaced by an RCS draw. So the mix still follows the sizes
(per pass: as many source draws as source images, every generated pair once) and only which
source images are seen changes.

The release's 512 setting draws its source images once instead (`presample.py`, the
presampled subset) and trains without online RCS: `TaggedCropDataset` (mmseg DATASETS) wraps
the training dataset whose source part is such a subset, and loads a source sample again (new
random crop), at most `tries` (10) times, while the crop holds no more than `min_pixels` (1500)
pixels of the class the image was drawn for (SegModel `dg_dataset.py` `get_gta_rcs_crop`).
Generated samples pass through; the sampler stays mmengine's InfiniteSampler.

Two registered pieces of online RCS:
- `RareClassDataset` (mmseg DATASETS) wraps the training dataset (the source alone, or the
  ConcatDataset of source + generated). Its indices beyond len(dataset) name a draw:
  len + source_index * NUM_CLASSES + class, which it loads with the crop check above.
- `RareClassSampler` (mmengine DATA_SAMPLERS) yields those indices, seeded: the same seed gives
  the same sequence (and a resumed run, which mmengine fast-forwards through the sampler,
  sees the same draws).
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import numpy as np

from dginstyle.compat import import_mmseg

import_mmseg(init_default_scope=False)

from mmengine.dataset import ConcatDataset  # noqa: E402
from mmengine.dist import get_dist_info, sync_random_seed  # noqa: E402
from mmengine.registry import DATA_SAMPLERS  # noqa: E402
from mmseg.registry import DATASETS  # noqa: E402
from torch.utils.data import Sampler  # noqa: E402

from dginstyle.data.contract import read_class_stats  # noqa: E402
from dginstyle.diffusion.crops import RareClassSampler as ClassDraws  # noqa: E402
from dginstyle.io import DataError  # noqa: E402
from dginstyle.labels import CLASSES, NUM_CLASSES  # noqa: E402

TEMPERATURE = 0.01
MIN_CROP_RATIO = 0.5
CROP_TRIES = 10


def _source_part(dataset):
    """The PreparedSegDataset inside a training dataset (alone, or first of a ConcatDataset)."""
    from dginstyle.segmentation.datasets import PreparedSegDataset

    source = dataset.datasets[0] if isinstance(dataset, ConcatDataset) else dataset
    if not isinstance(source, PreparedSegDataset):
        raise DataError(f"rare class sampling needs a prepared source dataset first in the training set, found {type(source).__name__}")
    return source


def read_class_draws(dataset_dir, split: str = "train", temperature: float = TEMPERATURE, min_pixels: int | None = None):
    """(class/image draws from <dataset_dir>/class_stats/<split>.json, that file's path);
    `min_pixels` None: the threshold the dataset was prepared with. DataError with one line."""
    stats, stats_path = read_class_stats(dataset_dir, split, "rare class sampling needs them")
    if min_pixels is None:
        min_pixels = stats.get("min_pixels")
        if min_pixels is None:
            raise DataError(f"{stats_path}: no min_pixels recorded; give the RCS min pixels explicitly")
    if int(min_pixels) < 0:
        raise DataError(f"RCS min pixels must be >= 0, got {min_pixels}")
    return ClassDraws(stats, float(temperature), int(min_pixels), str(stats_path)), stats_path


class _WrappedDataset:
    """What mmengine reads from a training dataset, passed through to the wrapped `self.dataset`."""

    dataset: object

    @property
    def metainfo(self) -> dict:
        return copy.deepcopy(self.dataset.metainfo)

    def full_init(self) -> None:
        pass

    def __len__(self) -> int:
        return len(self.dataset)


@DATASETS.register_module()
class RareClassDataset(_WrappedDataset):
    """The training dataset, plus RCS draws of its source images (see module docstring)."""

    def __init__(self, dataset, temperature: float = TEMPERATURE, min_pixels: int | None = None, min_crop_ratio: float = MIN_CROP_RATIO):
        self.dataset = DATASETS.build(dataset) if isinstance(dataset, dict) else dataset
        if hasattr(self.dataset, "full_init"):
            self.dataset.full_init()
        if not float(min_crop_ratio) >= 0.0:
            raise DataError(f"RCS min crop ratio must be >= 0, got {min_crop_ratio}")
        source = _source_part(self.dataset)
        self.num_source = len(source)
        self.draws, stats_path = read_class_draws(source.dataset_dir, source.split, temperature, min_pixels)
        self.min_pixels = self.draws.min_pixels
        self.min_crop_ratio = float(min_crop_ratio)
        self.temperature = float(temperature)
        index_of = {Path(source.get_data_info(i)["seg_map_path"]).stem: i for i in range(self.num_source)}
        missing = [stem for stem in self.draws.stems if stem not in index_of]
        if missing or len(self.draws.stems) != self.num_source:
            raise DataError(f"{stats_path}: class statistics do not describe the split's images (e.g. {(missing or ['a count mismatch'])[0]!r}); prepare the dataset again")
        self.index_of = index_of


    def draw_index(self, rng: np.random.Generator) -> int:
        """One RCS draw (class, then image), as an index of this dataset."""
        cls, stem = self.draws.sample(rng)
        return len(self.dataset) + self.index_of[stem] * NUM_CLASSES + cls

    @staticmethod
    def _class_pixels(sample: dict, cls: int) -> int | None:
        data_sample = sample.get("data_samples") if isinstance(sample, dict) else None
        gt = getattr(data_sample, "gt_sem_seg", None)
        return None if gt is None else int((gt.data == cls).sum())

    def __getitem__(self, idx: int):
        idx = int(idx)
        size = len(self.dataset)
        if idx < size:
            return self.dataset[idx]
        source_index, cls = divmod(idx - size, NUM_CLASSES)
        if source_index >= self.num_source:
            raise IndexError(f"RCS index {idx} out of range")
        if self.min_crop_ratio > 0:
            return _recrop(self.dataset, source_index, cls, self.min_pixels * self.min_crop_ratio, CROP_TRIES)
        return self.dataset[source_index]

    def describe(self) -> dict:
        p = self.draws.probabilities
        return {
            "temperature": self.temperature,
            "min_pixels": self.min_pixels,
            "min_crop_ratio": self.min_crop_ratio,
            "class_probabilities": {CLASSES[c]: round(float(p[c]), 6) for c in range(NUM_CLASSES) if round(float(p[c]), 6) > 0},
        }


def _recrop(dataset, index: int, cls: int, min_pixels: float, tries: int):
    """dataset[index], loaded again (a new random crop) at most `tries` times while its crop
    holds no more than `min_pixels` pixels of class `cls` (DAFormer's and the release's loop)."""
    sample = dataset[index]
    for _ in range(tries):
        count = RareClassDataset._class_pixels(sample, cls)
        if count is None or count > min_pixels:
            break
        sample = dataset[index]
    return sample


@DATASETS.register_module()
class TaggedCropDataset(_WrappedDataset):
    """The training dataset whose source part is a presampled subset (`PreparedSegDataset` with
    `subset`): each source sample re-cut until it shows its drawn class (see module docstring)."""

    def __init__(self, dataset, min_pixels: int = 1500, tries: int = CROP_TRIES):
        self.dataset = DATASETS.build(dataset) if isinstance(dataset, dict) else dataset
        if hasattr(self.dataset, "full_init"):
            self.dataset.full_init()
        if int(min_pixels) < 0 or int(tries) < 0:
            raise DataError(f"re-crop min pixels and tries must be >= 0, got {min_pixels} and {tries}")
        self.min_pixels = int(min_pixels)
        self.tries = int(tries)
        source = _source_part(self.dataset)
        self.num_source = len(source)
        self.tags = [source.get_data_info(i).get("tagged_class") for i in range(self.num_source)]
        if any(tag is None for tag in self.tags):
            raise DataError(f"{source.dataset_dir}: the re-crop by drawn class needs a presampled subset (`dginstyle presample-source`) as the source")


    def __getitem__(self, idx: int):
        idx = int(idx)
        if idx < self.num_source:
            return _recrop(self.dataset, idx, int(self.tags[idx]), self.min_pixels, self.tries)
        return self.dataset[idx]


def with_tagged_recrop(dataloader: dict, min_pixels: int = 1500, tries: int = CROP_TRIES) -> dict:
    """A train_dataloader config whose dataset (source part: a presampled subset) is wrapped in
    TaggedCropDataset; the sampler is left as it is."""
    out = copy.deepcopy(dataloader)
    out["dataset"] = dict(type="TaggedCropDataset", dataset=out["dataset"], min_pixels=int(min_pixels), tries=int(tries))
    return out


@DATA_SAMPLERS.register_module()
class RareClassSampler(Sampler):
    """Infinite seeded sampler over a `RareClassDataset` (see module docstring)."""

    def __init__(self, dataset, seed: int | None = None):
        if not isinstance(dataset, RareClassDataset):
            raise DataError(f"RareClassSampler needs a RareClassDataset, got {type(dataset).__name__}")
        self.dataset = dataset
        self.rank, self.world_size = get_dist_info()
        self.seed = sync_random_seed() if seed is None else int(seed)
        self.size = len(dataset)
        self.indices = self._indices_of_rank()

    def _infinite_indices(self):
        rng = np.random.default_rng([self.seed, 0x5C5])
        num_source = self.dataset.num_source
        while True:
            for idx in rng.permutation(self.size):
                yield self.dataset.draw_index(rng) if idx < num_source else int(idx)

    def _indices_of_rank(self):
        yield from itertools.islice(self._infinite_indices(), self.rank, None, self.world_size)

    def __iter__(self):
        yield from self.indices

    def __len__(self) -> int:
        return self.size

    def set_epoch(self, epoch: int) -> None:
        """Iteration-based training: nothing to do (as InfiniteSampler)."""


def with_rare_class_sampling(dataloader: dict, temperature: float = TEMPERATURE, min_pixels: int | None = None, min_crop_ratio: float = MIN_CROP_RATIO) -> dict:
    """A train_dataloader config whose dataset is wrapped in RareClassDataset and sampled by
    RareClassSampler (the seed comes from the Runner's randomness seed)."""
    out = copy.deepcopy(dataloader)
    out["dataset"] = dict(type="RareClassDataset", dataset=out["dataset"], temperature=temperature, min_pixels=min_pixels, min_crop_ratio=min_crop_ratio)
    out["sampler"] = dict(type="RareClassSampler")
    return out
