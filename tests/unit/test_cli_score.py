"""`haven score`'s refusals read as refusals (exit 1, a plain sentence), not tracebacks."""

from __future__ import annotations


def test_the_command_line_says_a_voided_run_id_is_not_rewritten(tmp_path, monkeypatch, capsys
                                                               ) -> None:
    """`haven score` answers a voided run id with a plain refusal and exit 1, not a traceback."""
    import cli.score_cmd
    from cli.main import main
    from conftest import key_environment
    from pipeline.score import RunIdTaken

    def refused(*args, **kwargs):
        raise RunIdTaken("run score-2025-04-01-abcd exists with status voided: it is never "
                         "rewritten")

    monkeypatch.setattr(cli.score_cmd, "score", refused)
    env = {"HAVEN_HOME": str(tmp_path / "home"), **key_environment()}
    assert main(["score", "--at", "2025-04-01"], env) == 1
    out = capsys.readouterr().out
    assert "not scored" in out and "never" in out and "Traceback" not in out
