"""``mm-opensearch train``: fine-tune the towers on a team's own catalog and judged queries."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from mm_opensearch.config import get_settings

console = Console()


def train(
    catalog: Annotated[Path, typer.Option(help="Products, JSON Lines (.jsonl or .jsonl.gz).")],
    out: Annotated[Path, typer.Option(help="Folder of the model artifact to write.")],
    queries: Annotated[Path | None, typer.Option(help="TSV: query_id, query[, split, template].")] = None,
    qrels: Annotated[Path | None, typer.Option(help="TSV: query_id, product_id, grade.")] = None,
    clicks: Annotated[Path | None, typer.Option(help="TSV: query, product_id (instead of queries+qrels).")] = None,
    split: Annotated[str, typer.Option(help="Query split to train on; dev slice is carved from it.")] = "train",
    product_splits: Annotated[Path | None, typer.Option(help="TSV product_id, split: train only on that split's products.")] = None,
    fusion: Annotated[str, typer.Option(help="weighted_sum | concat_mlp | gated | cross_attention (weighted_sum won on the Myntra dev slice).")] = "weighted_sum",
    text_only: Annotated[bool, typer.Option(help="Train a text-only tower (the dense_text baseline).")] = False,
    dim: int = 256,
    stage1_epochs: int = 8,
    stage2_epochs: int = 16,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    dev_fraction: float = 0.1,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint of a run with the same --out.")] = False,
    image_backbone: Annotated[str, typer.Option(help="efficientnet-lite0 | efficientnet-lite2 (about twice the compute) | mobilenet-v2 | a local CLIP/SigLIP folder.")] = "efficientnet-lite0",
    colour_descriptor: Annotated[bool, typer.Option(help="Add the CIELAB colour and pattern descriptor of the product photo to the image features (docs/quality.md).")] = False,
    stage_statistics: Annotated[bool, typer.Option(help="Add the product's mean and spread on the CNN's mid-level feature maps, which keep colour and texture (EfficientNet-Lite only; docs/quality.md).")] = False,
    hard_negatives: Annotated[int, typer.Option(help="Hard negatives mined per query (products nearest its text that the labels do not mark relevant); 0 = in-batch only.")] = 0,
    hard_negative_field: Annotated[str | None, typer.Option(help="Mine hard negatives only among products with the same value of this field as the query's labelled ones (e.g. article_type).")] = None,
    query_trainable_layers: Annotated[int, typer.Option(help="Fine-tune the top N layers of the query encoder (its own copy; product texts keep the frozen, cached one). 0 = only the head.")] = 0,
    query_encoder_lr: float = 3e-5,
    weight_average: Annotated[float, typer.Option(help="Rank and keep an exponential moving average of the weights with this decay per step (e.g. 0.99); 0 = the last step's weights.")] = 0.0,
) -> None:
    """Stage 1: query<->text and query<->image; stage 2: query<->fused (stage-1 losses kept as auxiliaries)."""
    from mm_opensearch.towers import ModelConfig, MultimodalModel  # noqa: PLC0415 - torch only when training
    from mm_opensearch.training import TrainConfig, TrainingInputs, train_from_files  # noqa: PLC0415

    settings = get_settings()
    from mm_opensearch.towers.config import ImageBackboneSpec, TextBackboneSpec  # noqa: PLC0415

    query = TextBackboneSpec(trainable_layers=query_trainable_layers) if query_trainable_layers else None
    config = ModelConfig(dim=dim, fusion=fusion, seed=seed, query_backbone=query,
                         image_backbone=ImageBackboneSpec(name=image_backbone,
                                                           colour_descriptor=colour_descriptor,
                                                           stage_statistics=stage_statistics))
    model = MultimodalModel.from_config(config, settings=settings)
    cfg = TrainConfig(stage1_epochs=stage1_epochs, stage2_epochs=stage2_epochs, batch_size=batch_size, lr=lr,
                      seed=seed, modalities="text" if text_only else "multimodal",
                      hard_negatives=hard_negatives, hard_negative_field=hard_negative_field,
                      query_encoder_lr=query_encoder_lr, weight_average=weight_average)
    inputs = TrainingInputs(catalog=catalog, queries=queries, qrels=qrels, clicks=clicks, query_split=split,
                            product_splits=product_splits, dev_fraction=dev_fraction)

    def show(record: dict) -> None:
        console.print(f"stage {record['stage']} epoch {record['epoch']:>2}  loss {record['loss']:.4f}  "
                      f"dev nDCG@10 {record['dev_ndcg@10']:.4f}  T {record['temperature']:.4f}")

    result = train_from_files(model, inputs, settings, cfg, out_dir=out, resume=resume, on_epoch=show,
                              on_stage=lambda msg: console.print(f"[dim]{msg}[/]"))
    console.print(f"best dev nDCG@10 {result.best_dev_ndcg:.4f} at stage/epoch {result.best_epoch}; "
                  f"model {model.model_id} saved to {out}")


def export_query_graph(
    model_dir: Annotated[Path | None, typer.Argument(help="Model folder (default: MMOS_MODEL_DIR, else the packaged model).")] = None,
) -> None:
    """Write <model>/query_graph (ONNX + tokenizer), so a search install without torch serves the model."""
    from mm_opensearch.errors import ModelError  # noqa: PLC0415
    from mm_opensearch.resources import default_model_dir  # noqa: PLC0415

    if importlib.util.find_spec("torch") is None:
        msg = "export-query-graph needs PyTorch: run it from an install with mm-opensearch[worker] or [train]"
        raise ModelError(msg)
    from mm_opensearch.towers import MultimodalModel  # noqa: PLC0415 - torch only when exporting
    from mm_opensearch.towers.onnx_text import export_query_graph as export  # noqa: PLC0415

    settings = get_settings()
    folder = model_dir or settings.model_dir or default_model_dir()
    model = MultimodalModel.load(folder, settings=settings, use_feature_cache=False)
    out = export(model, folder)
    size = sum(p.stat().st_size for p in out.iterdir()) / 2**20
    console.print(f"wrote {out} ({size:.1f} MiB) for model {model.model_id}")
