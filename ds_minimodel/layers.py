"""The layers of the package, bottom first: the written order its imports follow.

A room is a top-level module or subpackage of `ds_minimodel`. A module may import from its own
room and from any room listed before its own, never from one listed after it: an import that
runs up is a design error, whether it sits at the top of a module or inside a function (a
function-level import hides a dependency; it does not remove it). tests/test_layers.py checks
every import of the package against this list, and that no two modules import each other at
module level, directly or round a cycle.

The order is a total one: two rooms never sit on the same level, so no arrow runs sideways.
Rooms that do not import each other could swap places; the list fixes one order so that a new
arrow between them is a decision, made here.
"""

LAYERS = (
    # The package root: its version, nothing else.
    "ds_minimodel",
    # One-line user errors (UserError and its kinds): every layer raises them.
    "errors",
    # Directories written all at once (datasets, packs, exports): a failed write leaves nothing.
    "staged_dir",
    # The configs that ship with the package (configs/, ds_configs/), found by name from anywhere.
    "shipped",
    # Child processes with their output and failures reported; free ports.
    "subprocess_runner",
    # Named RNG streams taking turns in torch's generators (per-language dropout).
    "rng_streams",
    # Dataclass configs: YAML < CLI dotlist, strict, every problem at once.
    "config",
    # The MLM head and embedding kernels: reference, chunked torch, Triton, CUDA.
    "kernels",
    # The encoder, a plain nn.Module: embeddings, blocks, MLM heads, task heads.
    "model",
    # The method's accounting, below the loop and the steps: what each step kind trains (rules),
    # the analytic FLOP count, FOCUS's one-time cost.
    "method",
    # Infrastructure every step shares, knowing nothing of what is trained: the engine (the only
    # DeepSpeed import), checkpoints, the loop, the job, the run lock, metrics, MFU.
    "training",
    # Tokenizers behind one interface, and how a model family frames segments (layout).
    "tokenizers",
    # Corpora: the Bible tables and recipes, shards, masking, the loader, the cipher language.
    "data",
    # Downstream tasks: formats and loaders, the Bible stand-ins, batching, metrics.
    "tasks",
    # What steps hand each other, and models in and out: model directories, language packs,
    # surgery, Hugging Face import and export, a checkpoint exported as a model directory.
    "artefacts",
    # The pipeline's steps: pretrain, MiniPost, adapt, finetune, transfer.
    "steps",
    # Reading what the steps did: the body's report, the pipeline's report.md.
    "analysis",
    # The compute-budget study: runs, scoring, matching, bootstrap, rendering, experiments.
    "study",
    # The pipelines: each step's module in a subprocess, then the report.
    "pipeline",
    # Studies and pipelines as files (studies/*.yaml): strict loading, the commands each runs.
    "specs",
    # The command line: one module per step or tool (python -m ds_minimodel.cli.<step>, the
    # ds-minimodel console script, launchers/*.py); the top, since it reaches every step.
    "cli",
    # This list.
    "layers",
)

# The one module that imports DeepSpeed, across ds_minimodel/, launchers/ and bench/ (tests may
# import it before forking ranks): everything else reaches DeepSpeed through it, so a DeepSpeed
# upgrade, or a run without DeepSpeed (train.engine=torch), touches one file.
DEEPSPEED_IMPORTER = "ds_minimodel.training.engine"
