"""Resumable, RobustBench-style attack evaluations: :func:`evaluate_attack` and its result files.

Modules (each imports its siblings directly, never through this package):

- :mod:`.evaluate`  :func:`evaluate_attack`, in steps; DDP ranks; rank 0 assembles
- :mod:`.results`   result names and paths, :func:`find_results`, hashes, the JSON file form, reading
- :mod:`.reuse`     the look-up of a finished result; results of other settings kept under ``superseded/``
- :mod:`.chunks`    the seeded subset, one chunk's attack (:func:`run_chunk`), chunk files and their store
- :mod:`.claims`    chunk claims shared by independent processes (TTL, heartbeat, take-over)
- :mod:`.worker`    computing this process's chunks under claims
- :mod:`.summary`   the summary numbers and the result assembled from its chunks
- :mod:`.ensemble`  the per-example worst case over several attacks' results (AutoAttack's ensemble)
- :mod:`.settings`  attack settings: Appendix C presets, unbounded attacks, checks against the class
- :mod:`.forward`   batched predictions, ``torch.compile``d forwards
"""
from .chunks import chunk_seed, load_examples, run_chunk, subset_positions
from .ensemble import ensemble
from .claims import ChunkClaim, claim_heartbeat_s, claim_status, claim_ttl_s
from .evaluate import evaluate_attack
from .forward import PRECISIONS, attack_precision, compile_requested, compiled_forward, precision_requested, predict_batched
from .results import (EXAMPLE_FIELDS, SCHEMA, chunk_dir, ensure_writable, find_results, load_result, model_hash,
                      parse_result, parse_result_name, result_name, result_path, results_frame, settings_hash,
                      store_of, tensor_sha)
from .settings import is_unbounded, resolve_attack_settings
from .summary import summarize

__all__ = [
    "EXAMPLE_FIELDS", "PRECISIONS", "SCHEMA", "attack_precision", "precision_requested", "ChunkClaim", "chunk_dir", "chunk_seed", "claim_heartbeat_s", "claim_status",
    "claim_ttl_s", "compile_requested", "ensemble", "compiled_forward", "ensure_writable", "evaluate_attack", "find_results",
    "is_unbounded", "load_examples", "load_result", "model_hash", "parse_result", "parse_result_name",
    "predict_batched", "resolve_attack_settings", "result_name", "result_path", "results_frame", "run_chunk",
    "settings_hash", "store_of", "subset_positions", "summarize", "tensor_sha",
]
