"""Training small recall models (Based, Mamba, Mamba-2, GLA and a Llama baseline) on the synthetic suite.

``examples/train_recall.py`` is the command line; the modules here hold its parts:
tokenizer (the demo's byte-level BPE), data (the training mixture as fixed-shape batches), models (configs,
HF model classes, the differentiable RecurrentLM view), loop (the timed training run), evaluation (plain vs JRT
accuracy on the test split), report (results.json, the RESULTS.md table, the demo export).
"""
