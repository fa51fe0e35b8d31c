"""Quality proxies: `short_train` (train a width-scaled copy of a genome, report validation bits per byte) and
`corpus` (the byte-level training data it reads). Submodules import torch; import them directly."""
