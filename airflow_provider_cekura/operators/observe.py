"""CekuraObserveOperator: ingest one call or a batch of calls into Cekura, optionally wait for evaluation."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_cekura.exceptions import CekuraConfigurationError, CekuraValidationError
from airflow_provider_cekura.operators._wait import CekuraEvaluationWaitOperator
from airflow_provider_cekura.payloads import OBSERVE_FIELDS

if TYPE_CHECKING:
    from airflow_provider_cekura.payloads import RecordingSource
    from airflow_provider_cekura.version_compat import Context

_AGENT_FIELDS = ("agent", "assistant_id")


def _describe(err: Exception) -> str:
    """A one-line reason for a failed call (provider errors are safe to log; others get their type)."""
    from airflow_provider_cekura.exceptions import CekuraError

    return str(err) if isinstance(err, CekuraError) else f"{type(err).__name__}: {err}"


class CekuraObserveOperator(CekuraEvaluationWaitOperator):
    """Ingest voice-agent calls into Cekura (``POST /observability/v1/observe/``).

    **One call**: give its fields directly (``call_id``, ``agent`` or
    ``assistant_id``, ``transcript_json``, ...); the task returns the call log
    id (an ``int``) through XCom. Works with dynamic task mapping, e.g.
    ``CekuraObserveOperator.partial(task_id="observe", agent=1).expand(call_id=[...])``
    or ``.expand_kwargs([...])``.

    **Many calls**: give ``calls``, a list of dicts of observe fields (plus an
    optional ``"voice_recording"``), or that list as JSON text (an XCom or a
    template such as ``"{{ ti.xcom_pull('read') | tojson }}"``). The task
    returns the call log ids in input order. Fields given to the operator
    itself (say ``agent=1``) are defaults for every call; ``agent`` and
    ``assistant_id`` are taken from the operator only when a call names neither.

    What happens, in order:

    1. Every call is validated (:func:`airflow_provider_cekura.payloads.validate_calls`, which the
       hook's ``observe`` runs too) and every recording checked readable and allowed (a local file only
       under the DAG's folder, its ``template_searchpath``, ``recording_roots`` or the connection's
       ``recording_roots`` extra; never ``/proc``, ``/sys``, ``/dev``). One bad call fails the task before
       any request; the error names the field and the ``call_id``.
    2. The call_ids Cekura already holds are looked up (one request per 50) and
       not sent again: a task retry or a DAG re-run never creates a second call
       log for a ``call_id``. Their ids are returned like the others.
    3. The rest are sent, ``max_concurrency`` at a time (:meth:`CekuraHook.observe_many
       <airflow_provider_cekura.hooks.cekura.CekuraHook.observe_many>`), through one hook whose
       retries are themselves idempotent (after a timeout, 5xx or dropped
       connection the call is looked up before it is sent again).
    4. The ids are pushed to XCom (key ``call_log_ids``) and the dashboard URL of
       the first call log (key ``cekura_call_log_url``, read by the "Cekura call
       log" extra link), before any waiting. When some calls fail, the others are
       still sent, those ids are pushed (``None`` where a call failed) and
       :class:`~airflow_provider_cekura.exceptions.CekuraObserveBatchError` names
       exactly the failed call_ids and why.
    5. With ``wait_for_evaluation``, the task waits until Cekura has evaluated the
       call logs (polling, or in the triggerer when ``deferrable``) and fails, naming
       the ids, on a timeout or (with ``fail_on_evaluation_failure``) a failed evaluation.

    Unlike a deferred HTTP request, deferral never repeats the observe request: the
    calls are sent before the task defers, and ``execute_complete`` only reads the
    trigger's event. Payloads and transcripts are never logged (counts and ids are);
    the API key never appears in logs, XComs or errors. Note that Airflow stores
    rendered template fields (the "Rendered Template" view), transcripts included.

    A templated string ending in ``.json`` is read as a template file (searched in
    the DAG's folder and ``template_searchpath``), so ``transcript_json="transcript.json"``
    sends the rendered file; JSON text is parsed.

    :param call_id: your own id of the call, at most 100 characters; the idempotency key (templated).
    :param agent: Cekura agent id; exactly one of ``agent`` or ``assistant_id`` (templated).
    :param assistant_id: the voice platform's assistant id (templated).
    :param transcript_type: ``cekura`` (default), ``vapi``, ``retell``, ... (templated).
    :param transcript_json: the transcript in that format: a list/dict, JSON text or a ``.json``
        template file (templated).
    :param voice_recording_url: http(s) URL of the recording (templated).
    :param voice_recording: a recording to upload: a local path, an ``ObjectStoragePath``
        (``s3://``, ``gs://``, ``file://``, ...) or a binary file object; streamed as multipart (templated).
    :param call_ended_reason: why the call ended (templated).
    :param customer_number: the customer's phone number (templated).
    :param metadata: a dict (or JSON text) stored with the call log (templated).
    :param timestamp: when the call happened: datetime or ISO 8601 (templated).
    :param dynamic_variables: a dict (or JSON text) of the agent's dynamic variables (templated).
    :param feedback: free-text feedback (templated).
    :param redact_fields: PII categories to redact, e.g. ``["phone_number", "ssn"]`` (templated).
    :param metric_ids: metrics to evaluate: a list of ints or a comma string (templated).
    :param main_agent_channel_index: 0 or 1, the recording channel of the main agent (templated).
    :param trace_id: a hex trace id, at most 32 characters (templated).
    :param calls: many calls: a list of dicts of the fields above (plus ``voice_recording``),
        or JSON text; not together with ``call_id`` (templated).
    :param max_concurrency: calls in flight at once (also the hook's HTTP connection pool size).
    :param recording_roots: more directories local recordings (``voice_recording``, also inside ``calls``)
        may be read from, besides the DAG's folder, its ``template_searchpath``, the DAGs folder and the
        connection's ``recording_roots`` extra. A local path is resolved (symlinks, ``..``) and refused
        outside those roots, under ``/proc``, ``/sys`` or ``/dev``, or when it is not a regular file; remote
        ``ObjectStoragePath`` URLs (``s3://``...) are not limited. Not templated.

    The waiting arguments belong to :class:`~airflow_provider_cekura.operators._wait.CekuraEvaluationWaitOperator`
    (the same for every Cekura operator; see "Operators: shared behaviour" in ``docs/operators.md``):
    ``cekura_conn_id`` (templated), ``wait_for_evaluation``, ``deferrable`` (default
    ``[operators] default_deferrable``), ``poll_interval``, ``timeout``, ``fail_on_evaluation_failure``.
    """

    template_fields: Sequence[str] = (*OBSERVE_FIELDS, "voice_recording", "calls", "cekura_conn_id")
    template_ext: Sequence[str] = (".json",)
    template_fields_renderers = {
        "transcript_json": "json",
        "metadata": "json",
        "dynamic_variables": "json",
        "calls": "json",
    }
    ui_color = "#e3f2fd"

    def __init__(
        self,
        *,
        call_id: str | None = None,
        agent: int | str | None = None,
        assistant_id: str | None = None,
        transcript_type: str | None = None,
        transcript_json: Any = None,
        voice_recording_url: str | None = None,
        voice_recording: RecordingSource | None = None,
        call_ended_reason: str | None = None,
        customer_number: str | None = None,
        metadata: dict[str, Any] | str | None = None,
        timestamp: Any = None,
        dynamic_variables: dict[str, Any] | str | None = None,
        feedback: str | None = None,
        redact_fields: list[str] | str | None = None,
        metric_ids: list[int] | str | None = None,
        main_agent_channel_index: int | None = None,
        trace_id: str | None = None,
        calls: Any = None,
        max_concurrency: int = 8,
        recording_roots: Sequence[str | os.PathLike[str]] | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if call_id is not None and calls is not None:
            raise CekuraConfigurationError(
                "Give either call_id (one call) or calls (many calls), not both; put each call_id in its call dict."
            )
        if voice_recording is not None and calls is not None:
            raise CekuraConfigurationError(
                "voice_recording belongs to one call: with calls, give each call its own 'voice_recording'."
            )
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise CekuraConfigurationError(f"max_concurrency must be a positive integer, got {max_concurrency!r}")
        self.call_id = call_id
        self.agent = agent
        self.assistant_id = assistant_id
        self.transcript_type = transcript_type
        self.transcript_json = transcript_json
        self.voice_recording_url = voice_recording_url
        self.voice_recording = voice_recording
        self.call_ended_reason = call_ended_reason
        self.customer_number = customer_number
        self.metadata = metadata
        self.timestamp = timestamp
        self.dynamic_variables = dynamic_variables
        self.feedback = feedback
        self.redact_fields = redact_fields
        self.metric_ids = metric_ids
        self.main_agent_channel_index = main_agent_channel_index
        self.trace_id = trace_id
        self.calls = calls
        self.max_concurrency = max_concurrency
        self.recording_roots = [recording_roots] if isinstance(recording_roots, str) else list(recording_roots or [])

    def _hook_kwargs(self) -> dict[str, Any]:
        return {"pool_size": self.max_concurrency}

    @property
    def _single(self) -> bool:
        return self.calls is None

    def _result_from_ids(self, call_log_ids: list[int]) -> Any:
        if self._single and len(call_log_ids) == 1:
            return call_log_ids[0]
        return list(call_log_ids)

    # ------------------------------------------------------------------ validation

    def _operator_fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in OBSERVE_FIELDS if getattr(self, name) is not None}

    def _recording_roots(self) -> list[Any]:
        """Roots local recordings may come from: ``recording_roots``, the DAG's folder and ``template_searchpath``
        (the hook adds the connection's ``recording_roots`` extra and the DAGs folder)."""
        roots: list[Any] = list(self.recording_roots)
        dag = self.dag if self.has_dag() else None
        if dag is not None:
            folder = getattr(dag, "folder", None)
            if folder:
                roots.append(folder)
            searchpath = getattr(dag, "template_searchpath", None) or []
            roots.extend([searchpath] if isinstance(searchpath, str) else searchpath)
        return roots

    def _calls(self) -> list[Mapping[str, Any]]:
        """The calls to send, the operator's own fields merged in as defaults (not validated yet)."""
        from airflow_provider_cekura.payloads import load_calls

        if self.call_id is not None and self.calls is not None:
            raise CekuraValidationError("calls", "give either call_id (one call) or calls (many calls), not both")
        if self._single:
            return [{**self._operator_fields(), "voice_recording": self.voice_recording}]
        defaults = self._operator_fields()
        inputs: list[Mapping[str, Any]] = []
        for call in load_calls(self.calls):
            merged = {k: v for k, v in defaults.items() if k not in _AGENT_FIELDS}
            if all(call.get(k) is None for k in _AGENT_FIELDS):
                merged.update({k: v for k, v in defaults.items() if k in _AGENT_FIELDS})
            merged.update(call)
            inputs.append(merged)
        return inputs

    def prepare(self) -> list[tuple[dict[str, Any], RecordingSource | None]]:
        """Validate the whole batch without any request: ``[(payload, recording or None)]`` in input order.

        Runs :func:`~airflow_provider_cekura.payloads.validate_calls`, the validation the hook's ``observe``
        and ``observe_many`` run too (``execute`` leaves it to ``observe_many``: each call is validated once).

        :raises CekuraValidationError: naming the field and the call_id of the first bad call.
        """
        from airflow_provider_cekura.payloads import validate_calls

        inputs = self._calls()
        has_recording = any(call.get("voice_recording") is not None for call in inputs)
        roots = self.hook.recording_roots(self._recording_roots()) if has_recording else ()
        return validate_calls(inputs, roots)

    # ------------------------------------------------------------------ sending

    def _observe_many(self, calls: list[Mapping[str, Any]]) -> tuple[list[int | None], dict[str, Exception]]:
        """:meth:`CekuraHook.observe_many <airflow_provider_cekura.hooks.cekura.CekuraHook.observe_many>`:
        ``(ids in input order, {call_id: error})``."""
        from airflow_provider_cekura.exceptions import CekuraObserveBatchError

        try:
            ids = self.hook.observe_many(
                calls, max_concurrency=self.max_concurrency, recording_roots=self._recording_roots()
            )
        except CekuraObserveBatchError as err:
            return list(err.call_log_ids), dict(err.errors)
        return ids, {}

    def ingest(
        self, batch: list[tuple[dict[str, Any], RecordingSource | None]]
    ) -> tuple[list[int | None], dict[str, Exception]]:
        """Send a batch from :meth:`prepare` through ``CekuraHook.observe_many``: ``(ids in input order,
        {call_id: error})``.

        A call that fails does not stop the others, except an authentication or
        configuration error, after which nothing more is sent.
        """
        return self._observe_many([{**payload, "voice_recording": recording} for payload, recording in batch])

    def execute(self, context: Context) -> Any:
        self._start_try()
        from airflow_provider_cekura.exceptions import CekuraObserveBatchError

        calls = self._calls()
        ids, failures = self._observe_many(calls)  # validates every call before any request
        self._push_ids(context, ids)
        if failures:
            if self._single:
                raise next(iter(failures.values()))
            call_ids = [str(call.get("call_id")) for call in calls]
            messages = {cid: _describe(failures[cid]) for cid in call_ids if cid in failures}
            raise CekuraObserveBatchError(messages, ids, errors=failures)
        done = [int(i) for i in ids if i is not None]
        self.log.info("Call log id(s): %s", done[:20] if len(done) > 20 else done)
        return self.wait_or_defer(context, done, self._result_from_ids(done))
