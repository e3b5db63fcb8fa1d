"""Model layer: loading teachers and students, the embedded SmolLM2 teacher, pruned / fresh students, tiny models,
the teacher/student compatibility check and atomic checkpoint saving."""

from switch_core.models.checkpoint import save_pretrained_atomic
from switch_core.models.compat import IncompatibleModelsError, check_compatible
from switch_core.models.device import model_device
from switch_core.models.embedded import EMBEDDED_TEACHER_NAME, EmbeddedModelError, embedded_teacher_dir
from switch_core.models.loading import (
    EMBEDDED_SPEC,
    ModelLoadError,
    ModelSource,
    load_causal_lm,
    load_tokenizer,
    resolve_dtype,
    resolve_model_source,
)
from switch_core.models.student import (
    StudentConfigError,
    block_influence,
    count_parameters,
    evenly_spaced_layers,
    model_from_config,
    prune_layers,
    top_influence_layers,
)

__all__ = [
    "EMBEDDED_SPEC",
    "EMBEDDED_TEACHER_NAME",
    "EmbeddedModelError",
    "IncompatibleModelsError",
    "ModelLoadError",
    "ModelSource",
    "StudentConfigError",
    "block_influence",
    "check_compatible",
    "count_parameters",
    "embedded_teacher_dir",
    "evenly_spaced_layers",
    "load_causal_lm",
    "load_tokenizer",
    "model_device",
    "model_from_config",
    "prune_layers",
    "resolve_dtype",
    "resolve_model_source",
    "save_pretrained_atomic",
    "top_influence_layers",
]
