"""GoodFit and its arithmetic. Depends only on torch: nothing here knows of recipes, files or terminals."""

from goodfit_cli.optim.functional import ProjectionStats
from goodfit_cli.optim.goodfit import GoodFit

__all__ = ["GoodFit", "ProjectionStats"]
