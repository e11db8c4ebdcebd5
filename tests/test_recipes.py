"""The recipes under recipes/ as shipped: each one loads, and their stages chain from a fresh checkout."""

from pathlib import Path

import pytest

from hydra_export.heads.registry import HEAD_TYPES
from hydra_export.training.recipe import TrainRecipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.json"))
SHIPPED = ROOT / "hydra_export" / "shipped_heads"


def load_all() -> dict[str, TrainRecipe]:
    return {path.name: TrainRecipe.from_file(path) for path in RECIPES}


def test_there_are_recipes():
    assert len(RECIPES) >= 3


@pytest.mark.parametrize("path", RECIPES, ids=lambda path: path.name)
def test_recipe_loads_with_data_in_the_repository(path):
    recipe = TrainRecipe.from_file(path)
    assert recipe.kind in HEAD_TYPES
    for data in recipe.data_files:
        assert (ROOT / data).is_file(), f"{path.name}: data file {data} is not in the repository"


def test_every_stage_starts_from_a_stage_another_recipe_writes():
    recipes = load_all()
    written = {recipe.output_dir: name for name, recipe in recipes.items()}
    for name, recipe in recipes.items():
        seen, current = {name}, recipe
        while current.init_heads:  # walk back to a stage that starts from scratch
            assert current.init_heads in written, f"{name}: init_heads {current.init_heads} is written by no recipe"
            before = written[current.init_heads]
            assert before not in seen, f"{name}: the stages loop through {before}"
            assert recipes[before].kind == current.kind, f"{name}: continues {before}, a different kind"
            seen.add(before)
            current = recipes[before]


def test_every_shipped_heads_directory_has_the_recipe_that_writes_it():
    written = [Path(recipe.output_dir) for recipe in load_all().values()]
    shipped = [path.relative_to(ROOT) for path in SHIPPED.glob("*/*") if (path / "heads_config.json").is_file()]
    assert shipped
    for heads in shipped:
        assert written.count(heads) == 1, f"{heads} is written by {written.count(heads)} recipes, not one"
