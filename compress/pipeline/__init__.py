"""`compress pipeline`: a YAML recipe of stages, validated up front, run with skipping and resume."""
from .recipe import Recipe, Stage, load_recipe, parse_recipe
from .runner import PipelineResult, run_pipeline

__all__ = ["Recipe", "Stage", "load_recipe", "parse_recipe", "PipelineResult", "run_pipeline"]
