"""Print the versions vlbert_d2 runs with: ``python -m vlbert_d2.collect_env``."""
import platform


def collect_env():
    """Return a list of (name, value) rows: Python, torch, torchvision, detectron2 (and which
    build: compiled or Python-only), transformers, tokenizers, numpy, Pillow, device."""
    import numpy
    import PIL
    import tokenizers
    import torch
    import torchvision
    import transformers

    import detectron2
    import detectron2._C as d2_C

    import vlbert_d2

    if getattr(d2_C, "PYTHON_ONLY_BUILD", False):
        build = "Python-only (no compiled extension; compiled-only ops raise CompiledOpUnavailable)"
    else:
        build = "compiled (" + getattr(d2_C, "__file__", "?") + ")"
    if torch.cuda.is_available():
        device = f"cuda: {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    else:
        device = f"cpu ({torch.get_num_threads()} threads); no CUDA device"
    return [
        ("Python", platform.python_version()),
        ("vlbert_d2", vlbert_d2.__version__),
        ("torch", torch.__version__),
        ("torchvision", torchvision.__version__),
        ("detectron2", f"{detectron2.__version__} @ {detectron2.__file__.rsplit('/', 1)[0]}"),
        ("detectron2 build", build),
        ("transformers", transformers.__version__),
        ("tokenizers", tokenizers.__version__),
        ("numpy", numpy.__version__),
        ("Pillow", PIL.__version__),
        ("device", device),
    ]


def main():
    rows = collect_env()
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
