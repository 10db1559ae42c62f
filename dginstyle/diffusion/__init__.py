"""The data generator: prior, source fine-tune, ControlNet, Style Swap, layouts, MRLF."""
