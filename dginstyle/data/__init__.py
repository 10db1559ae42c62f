"""Dataset readers, the miniature world, and the prepared-dataset contract."""
