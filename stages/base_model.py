"""base_model: pretrain the embedded lab model, convert a packaged (GGUF) model, or load a Hugging
Face model; save_pretrained."""
import logging
from importlib.metadata import version

from pipeline import paths
from pipeline.io import save_pretrained, write_json
from pipeline.models import PACKAGED
from pipeline.stage import main, stage

log = logging.getLogger("lwf")


@stage("base_model")
def run(cfg):
    """Write artifacts/base_model/ (model + tokenizer) and metrics/base_model.json."""
    if cfg.model.name == "lab":
        from pipeline.lab import pretrain_lab

        model, tok, stats = pretrain_lab(cfg.model.lab, cfg.data.max_length)
    elif cfg.model.name in PACKAGED:  # converted once: every later stage loads the saved checkpoint
        from pipeline.models import load_packaged

        src = PACKAGED[cfg.model.name]
        model, tok = load_packaged(cfg.model.name, cfg.model)
        stats = {"source": cfg.model.name, "n_params": sum(p.numel() for p in model.parameters()),
                 "gguf": f"{src.package} {version(src.package)}: {src.file}"}
    else:
        from pipeline.models import load_model

        log.info("stage base_model: loading %s", cfg.model.name)
        model, tok = load_model(cfg.model.name, cfg.model, device="cpu")
        stats = {"source": cfg.model.name, "n_params": sum(p.numel() for p in model.parameters())}
    save_pretrained(paths.BASE_MODEL, model, tok)
    write_json(paths.METRICS / "base_model.json", stats)


if __name__ == "__main__":
    main(run)
