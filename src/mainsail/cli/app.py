"""The ``mainsail`` command line: the typer app, its commands in ``--help`` order, and ``main()``.

Each command parses options, builds settings and calls the library; the commands live in
``cli.serve`` (serve, export-onnx, doctor, version), ``cli.up``, ``cli.endpoints``, ``cli.env``,
``cli.transform``, ``cli.metrics`` and ``cli.scale``.
"""

from __future__ import annotations

import typer

from mainsail.cli import endpoints, env, metrics, scale, serve, transform, up

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="mainsail: SageMaker-compatible model serving on your own machine.")

serve.register(app)
up.register(app)
serve.register_tools(app)
endpoints.register(app)
env.register(app)
transform.register(app)
metrics.register(app)
scale.register(app)


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
