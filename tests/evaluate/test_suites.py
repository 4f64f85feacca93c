"""The validation suite stays apart from what is reported and from the shipped meta-training mix."""

import jax

from lopt import tasks
from lopt.evaluate.suites import SUITES, build_task
from lopt.optimizers import pretrained
from lopt.tasks import sample_task


def _shapes(task) -> tuple:
    """The model's parameter shapes and a batch's shapes: a task of the mix with the same
    network but other batches (``digits_mlp_fullbatch``) is a different task."""
    key = jax.random.PRNGKey(0)
    trees = (jax.eval_shape(task.init, key), jax.eval_shape(task.sample_batch, key))
    return tuple(tuple(tuple(x.shape) for x in jax.tree.leaves(t)) for t in trees)


def test_validation_tasks_are_in_no_reported_suite_and_not_in_the_shipped_mix():
    validation = {t.task for t in SUITES["validation"]}
    for name, suite in SUITES.items():
        if name != "validation":
            assert not validation & {t.task for t in suite}, name
    # a draw of the mix is known by its model and batches: no validation task has both of a
    # mix group's
    card = pretrained.model_card("star")
    mix = tasks.get(card["meta_training"]["config"]["tasks"] if card else "mlp_family")
    mix_shapes = {_shapes(sample_task(g, jax.random.PRNGKey(0))) for g in mix.groups}
    for name in sorted(validation):
        assert _shapes(build_task(name)) not in mix_shapes, name
