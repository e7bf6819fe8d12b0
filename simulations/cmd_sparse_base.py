"""``fedelta prepare-sparse-base``: prune the base once (Prune Once for All) into a model folder."""

from __future__ import annotations

import argparse


def _prepare(args: argparse.Namespace) -> int:
    from fedelta.common.report import human_bytes
    from fedelta.common.sparse_base import SparseBaseRequest, prepare_sparse_base

    request = SparseBaseRequest(
        sparsity=args.sparsity, out=args.out, model=args.model, steps=args.steps, batch_size=args.batch_size,
        max_length=args.max_length, lr=args.lr, data=args.data, seed=args.seed,
    )
    report = prepare_sparse_base(request)
    sizes = report["bytes"]
    loss = report["final_distillation_loss"]
    print(f"sparsity {report['targeted_sparsity']:.4f} of {report['targeted_params']:,} body matrix weights "
          f"({report['model_sparsity']:.4f} of the whole model); "
          + ("one-shot (no distillation)" if loss is None else f"final distillation loss {loss:.4g}"))
    print(f"download as zstd-compressed fp32: {human_bytes(sizes['sparse_body_zstd'])} sparse vs "
          f"{human_bytes(sizes['dense_body_zstd'])} dense; safetensors on disk {human_bytes(sizes['safetensors'])}")
    print(f"wrote {args.out} (use it with --set model.sparse-base={args.out})")
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "prepare-sparse-base",
        help="prune the base model once while distilling from it (Prune Once for All)",
        description="Gradual magnitude pruning of the body's weight matrices (not embeddings, task head, norms "
        "or biases) on a cubic schedule up to --sparsity, distilling from the dense base's hidden states on "
        "unlabelled text of a bundled corpus. Writes a Hugging Face model folder and sparsity.json; "
        "`fedelta simulate --set model.sparse-base=DIR` then starts from it and keeps its zeros.",
    )
    parser.add_argument("--sparsity", type=float, required=True, help="fraction of each weight matrix set to zero")
    parser.add_argument("--out", required=True, help="model folder to write")
    parser.add_argument("--model", default="", help='model.path of the dense base ("" = bundled MiniLM, tiny-bert)')
    parser.add_argument("--steps", type=int, default=200, help="distillation steps (0 = one-shot pruning)")
    parser.add_argument("--batch-size", type=int, default=16, help="texts per step")
    parser.add_argument("--max-length", type=int, default=64, help="tokens per text")
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate of the student")
    parser.add_argument("--data", default="rotten-tomatoes", choices=("rotten-tomatoes", "bbc-news"),
                        help="bundled corpus whose text (labels unused, default test hold-out excluded) is distilled on")
    parser.add_argument("--seed", type=int, default=0, help="seeds batches (and the tiny models)")
    parser.set_defaults(handler=_prepare)
