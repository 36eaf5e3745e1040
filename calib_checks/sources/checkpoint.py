"""A checkpoint the gate scores itself: a hub id, a folder or a .gguf file, with its transforms (no prefix).

The spec grammar (``org/name[@rev]``, a folder, a ``.gguf`` file, then ``:temperature=T``, ``:dtype=D``,
``:chat``) is `models.parse_model_spec`'s; loading, identity and the software stack are calib_checks/models.py's;
the forward passes are the scoring engine's (`engine.Scorer`, `scoring.score_items`). Its scores are
deterministic for a given identity and stack, so `open_source` puts the score cache in front of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from calib_checks.records import ScoreStats, TaskScores
from calib_checks.sources import Source, SourceContext, SourceError

if TYPE_CHECKING:
    from calib_checks.data import TaskData
    from calib_checks.engine import Scorer


class CheckpointSource(Source):
    """A model calib-checks loads and scores; the spec is parsed (and a local path checked) when opened."""

    needs_items = True
    cacheable = True

    def __init__(self, text: str, context: SourceContext, revision: str | None = None) -> None:
        from calib_checks.models import parse_model_spec

        super().__init__(text, context)
        # ModelLoadError (a CalibChecksError) for a bad spec or a missing path; `revision`: `score --revision`
        self.spec = parse_model_spec(text, revision=revision)
        # Joined to the run's pool now, so that a sibling temperature scored first scores this one's items too.
        self._scorer: Scorer | None = None if context.scorers is None else context.scorers.scorer(self.spec)

    @property
    def scorer(self) -> Scorer:
        """The engine's scorer for this checkpoint (weights loaded on its first `score`); the run's pool's when
        the context has one (set in `__init__`)."""
        if self._scorer is None:
            from calib_checks.engine import Scorer

            c = self.context
            self._scorer = Scorer(self.spec, device=c.device, dtype=c.dtype, batch_size=c.batch_size,
                                  trust_remote_code=c.trust_remote_code, progress=c.progress, attention=c.attention,
                                  self_check=c.self_check)
        return self._scorer

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def label_context(self) -> tuple[str, ...]:
        return () if self.spec.source == "hub" else super().label_context

    def identity(self) -> dict[str, Any]:
        return self.scorer.identity

    def describe(self, identity: dict[str, Any]) -> str:  # type: ignore[override]
        from calib_checks.models import describe_identity

        return describe_identity(identity)

    def cache_inputs(self) -> dict[str, Any]:
        from calib_checks.scoring import SCORING_VERSION
        from calib_checks.tasks import PROMPT_VERSION

        # Whether the scoring path was checked is part of the key: a run that checks its path never takes scores
        # an unchecked run computed (they may come from a kernel that would have failed the check).
        return {"model_identity": self.identity(), "stack": self.scorer.stack, "prompt_version": PROMPT_VERSION,
                "scoring_version": SCORING_VERSION, "path_checked": self.context.self_check}

    def scores(self, task: str, data: TaskData | None, ids: Sequence[str] | None = None) -> TaskScores:
        # `ids`, when given, are `data`'s items (the Source contract): a checkpoint scores exactly what it is given.
        if data is None:
            raise SourceError(f"{self.text}: a checkpoint is scored on a task's items; none were given")
        records, engine = self.scorer.score(data)
        stats = ScoreStats(source="the calib-checks scoring engine", cache="off", computed=len(records),
                           engine=engine, stack=self.scorer.stack, n_available=data.n_available)
        return TaskScores(model_label=self.label, model_identity=self.identity(), task=task,
                          data_fingerprint=data.fingerprint, records=records, stats=stats)

    def close(self) -> None:
        if self._scorer is not None:
            self._scorer.unload()
