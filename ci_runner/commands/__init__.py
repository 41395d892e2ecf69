"""One module per `ci-runner` command (the pre-commit layout): what each command does, behind its
click declaration in cli.py. Results are exit codes; errors are the typed errors of errors.py
(cli.main maps them)."""
