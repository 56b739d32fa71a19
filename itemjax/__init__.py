"""itemjax: graph recommenders in JAX trained with smooth ranking losses."""

__version__ = "0.1.0"
