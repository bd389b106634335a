"""``jrt-bench``: kernel timings in the layout of the paper's Table 5, and end-to-end timings (time to first
token plain vs JRT, JRT cost per question with a cached first read, decode tokens/s against transformers).
Needs a CUDA GPU. ``python -m jrt_prompt.bench --help``."""
