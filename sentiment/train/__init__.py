"""The training program (``python train.py``): recipes, the epoch loop, run folders and
checkpoints, language-model pretraining, torchrun ranks, and calibrating a finished bundle.
Imports only the core."""
