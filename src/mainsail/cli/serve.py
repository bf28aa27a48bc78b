"""The commands over one model directory: ``serve`` (the data plane), ``export-onnx``, ``doctor``, and ``version``.

Each command imports what it runs inside its function, so that the CLI starts without the serving stack
(and ``serve`` never loads the control plane).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import typer

from mainsail._version import __version__
from mainsail.errors import MainsailError
from mainsail.log import configure_logging

logger = logging.getLogger("mainsail.cli")


def serve(
    model: Annotated[str | None, typer.Argument(
        help="Model directory or model.tar.gz [env MAINSAIL_MODEL; default /opt/ml/model]")] = None,
    entry_point: Annotated[str | None, typer.Option(
        "--entry-point", help="Inference script [env SAGEMAKER_PROGRAM; default inference.py]")] = None,
    source_dir: Annotated[str | None, typer.Option(
        "--source-dir", help="Directory or sourcedir.tar.gz holding the script "
        "[env SAGEMAKER_SUBMIT_DIRECTORY; default <model>/code]")] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind [default 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(
        help="Port [env SAGEMAKER_BIND_TO_PORT; default 8080]")] = None,
    workers: Annotated[int | None, typer.Option(
        help="Worker processes [env SAGEMAKER_MODEL_SERVER_WORKERS; default: cores]")] = None,
    timeout: Annotated[float | None, typer.Option(
        help="Seconds per request before 504 [env SAGEMAKER_MODEL_SERVER_TIMEOUT; default 60]")] = None,
    max_payload_mb: Annotated[float | None, typer.Option(
        "--max-payload-mb", help="Largest request body [env SAGEMAKER_MAX_PAYLOAD_IN_MB; default 6]")] = None,
    log_level: Annotated[str | None, typer.Option(
        "--log-level", help="debug/info/warning/error or 10..50 [env SAGEMAKER_CONTAINER_LOG_LEVEL]")] = None,
    default_accept: Annotated[str | None, typer.Option(
        "--default-accept",
        help="Type for a missing or */* Accept [env SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT]")] = None,
    framework: Annotated[str | None, typer.Option(
        help="Whose container defaults a script falls back to: auto, generic, sklearn, pytorch, "
        "xgboost, huggingface [env MAINSAIL_FRAMEWORK; default auto: judged from the loaded model]")] = None,
    install_requirements: Annotated[bool | None, typer.Option(
        "--install-requirements/--no-install-requirements",
        help="pip-install code/requirements.txt (cached), or only report what is missing")] = None,
    reload: Annotated[bool, typer.Option(
        "--reload", help="Restart the workers when the script or model files change")] = False,
    preload: Annotated[bool | None, typer.Option(
        "--preload/--no-preload", help="Load the model once and fork the workers so they share its memory, "
        "where the handler is fork-safe [env MAINSAIL_PRELOAD; default on]")] = None,
    batching: Annotated[bool | None, typer.Option(
        "--batching/--no-batching", help="Adaptive batching: requests queued behind a busy model go to it "
        "together (built-in handlers; scripts with predict_batch_fn) [env MAINSAIL_BATCHING; default on]")] = None,
    max_batch_size: Annotated[int | None, typer.Option(
        "--max-batch-size", help="Most requests per model call [env MAINSAIL_MAX_BATCH_SIZE; default 32]")] = None,
    max_batch_delay_ms: Annotated[float | None, typer.Option(
        "--max-batch-delay-ms", help="How long a batch formed under load may wait to fill up; a lone "
        "request never waits [env MAINSAIL_MAX_BATCH_DELAY_MS; default 0]")] = None,
    multi_model: Annotated[str | None, typer.Option(
        "--multi-model", metavar="MODELS_DIR", help="Serve the multi-model API (POST /models ...) "
        "[env SAGEMAKER_MULTI_MODEL=true; models dir default /opt/ml/models]")] = None,
    models_memory_mb: Annotated[float | None, typer.Option(
        "--models-memory-mb", help="Multi-model: memory budget of the loaded models, LRU-evicted "
        "[env MAINSAIL_MULTI_MODEL_MEMORY_MB; default half the RAM]")] = None,
    api_key: Annotated[str | None, typer.Option(
        "--api-key", help="Require this key (X-Api-Key or Authorization: Bearer) on every request but GET "
        "/ping [env MAINSAIL_API_KEY; at least 8 characters]")] = None,
) -> None:
    """Serve one model with the SageMaker container contract (/ping, /invocations)."""
    # here, not at the top: start-up cost (pydantic and the serving stack load only for `serve`)
    from pydantic import ValidationError

    from mainsail.serve.server import run_server
    from mainsail.settings import ServeSettings

    given: dict[str, Any] = {
        "model_path": model, "entry_point": entry_point, "source_dir": source_dir, "host": host,
        "port": port, "workers": workers, "timeout": timeout, "max_payload_mb": max_payload_mb,
        "log_level": log_level, "default_accept": default_accept, "framework": framework,
        "install_requirements": install_requirements, "reload": reload or None, "preload": preload,
        "batching": batching, "max_batch_size": max_batch_size, "max_batch_delay_ms": max_batch_delay_ms,
        "api_key": api_key,
    }
    try:
        settings = ServeSettings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    configure_logging(settings.log_level)
    try:
        # here: the multi-model container's app only loads for that mode
        from mainsail.serve.multimodel.app import multi_model_from_env, serve_multi_model

        if multi_model is not None or multi_model_from_env():
            code = serve_multi_model(settings, multi_model or model, models_memory_mb, workers)
        else:
            code = run_server(settings)
    except MainsailError as exc:
        logger.error("%s", exc.message)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


def export_onnx(
    model_dir: Annotated[str, typer.Argument(help="Reference (cursus bsm_pytorch) PyTorch model directory")],
    output: Annotated[str | None, typer.Option(
        "--output", "-o", help="Where to write the graph [default <MODEL_DIR>/model.onnx]")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (14 or later)")] = 14,
    atol: Annotated[float, typer.Option(
        help="Largest absolute difference of the probabilities allowed between ONNX Runtime and PyTorch")] = 1e-4,
) -> None:
    """Export the network to ONNX in the reference's layout, verified against PyTorch before it is written."""
    from mainsail.handlers.pytorch.export import export_onnx as export  # here: it imports torch (heavy)

    try:
        report = export(model_dir, output=output, opset=opset, atol=atol)
    except MainsailError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from None
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"wrote {report.path}")
    typer.echo(f"max abs diff {report.max_abs_diff:.3g} (atol {atol:g}), opset {report.opset}, "
               f"inputs {', '.join(report.inputs)}")


def doctor(
    model: Annotated[str, typer.Argument(help="Model directory or model.tar.gz to check")],
    entry_point: Annotated[str | None, typer.Option(
        "--entry-point", help="Inference script [env SAGEMAKER_PROGRAM; default inference.py]")] = None,
    source_dir: Annotated[str | None, typer.Option(
        "--source-dir", help="Directory or sourcedir.tar.gz holding the script "
        "[env SAGEMAKER_SUBMIT_DIRECTORY]")] = None,
    framework: Annotated[str | None, typer.Option(help="auto, generic, sklearn, pytorch, xgboost, huggingface")] = None,
    sample: Annotated[str | None, typer.Option(help="A request body to send in a trial invocation")] = None,
    sample_content_type: Annotated[str | None, typer.Option(
        "--sample-content-type", help="Its Content-Type [default: from the file extension]")] = None,
    accept: Annotated[str | None, typer.Option(help="Accept header of the trial invocation")] = None,
    serverless: Annotated[bool, typer.Option("--serverless", help="Check serverless limits (4 MB request)")] = False,
    invoke: Annotated[bool, typer.Option("--invoke/--no-invoke", help="Load the model and send a sample")] = True,
    install_requirements: Annotated[bool, typer.Option(
        "--install-requirements", help="pip-install code/requirements.txt (cached, as serve does) first")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Warnings fail too (exit 1)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """Check a model before deployment: archive, layout, script, requirements, artifacts, a trial invocation."""
    # here, not at the top: start-up cost (the checks load the data plane)
    from mainsail.doctor import diagnose, exit_code, render, to_json

    logging.disable(logging.CRITICAL)  # the findings say what the handlers would log
    try:
        findings = diagnose(model, entry_point=entry_point, source_dir=source_dir, framework=framework,
                            sample=sample, sample_content_type=sample_content_type, accept=accept,
                            serverless=serverless, invoke=invoke, install_requirements=install_requirements)
    finally:
        logging.disable(logging.NOTSET)
    if as_json:
        typer.echo(to_json(model, findings, strict=strict))
    else:
        from rich.console import Console

        render(model, findings, Console())
    raise typer.Exit(exit_code(findings, strict=strict))


def version() -> None:
    """Print mainsail's version."""
    typer.echo(__version__)


def register(app: typer.Typer) -> None:
    """Add ``serve`` and ``export-onnx`` to ``app``."""
    app.command()(serve)
    app.command("export-onnx")(export_onnx)


def register_tools(app: typer.Typer) -> None:
    """Add ``doctor`` and ``version`` to ``app``."""
    app.command()(doctor)
    app.command()(version)
