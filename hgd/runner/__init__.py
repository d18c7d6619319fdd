"""The competition harness: run attacks against defenses the way the NIPS 2017 organizers did.

``python -m hgd.cli.runner`` (or ``./run_attacks_and_defenses.sh``) runs every attack
submission on every batch of a dataset, enforces the epsilon box on what they
wrote, runs every defense on every adversarial batch and scores the lot (EVAL's
normalized scores and DEV's counts). ``python -m hgd.cli.runner validate PATH``
checks one submission the way the competition's validator did.

Modules, one idea each:

* :mod:`hgd.runner.submissions` -- submission folders (``metadata.json``) as
  :class:`~hgd.runner.submissions.Attack` / :class:`~hgd.runner.submissions.Defense`.
* :mod:`hgd.runner.executors` -- the executor interface (how one run happens);
  :mod:`hgd.runner.local_executor` runs a submission as a local subprocess,
  :mod:`hgd.runner.docker_executor` in a container.
* :mod:`hgd.runner.pieces` -- the dataset, its batches and the work pieces'
  stored records (one JSON per finished piece: the run is resumable).
* :mod:`hgd.runner.harness` -- runs the pieces: fresh anonymized inputs,
  epsilon enforcement, parsing the defenses' outputs.
* :mod:`hgd.runner.scoring` -- pure functions from classification records to
  scores, eligibility and timing.
* :mod:`hgd.runner.results` / :mod:`hgd.runner.report` -- the CSV files and the
  Markdown/HTML report.
* :mod:`hgd.runner.validate` -- the submission validator.
* :mod:`hgd.cli.runner` -- the command line.

Importing this package is cheap on purpose (no numpy, no framework): the
executors import it too.
"""
