"""The bottom layer every other package may import: it imports nothing of Gatehouse.

- ``gatehouse_core.records``: ``TrafficRecord`` (the one record per request) and ``Verdict``;
- ``gatehouse_core.settings``: settings types shared with evaluators and tuning (``SafetySettings``);
- ``gatehouse_core.trafficlog``: reading traffic logs back (``log_files``, ``read_jsonl``, ``follow_jsonl``);
- ``gatehouse_core.sqlitedb``: the SQLite connection helper of every embedded store;
- ``gatehouse_core.feedback``: feedback items and their SQLite store (written by the
  gateway's ``POST /v1/feedback``, read by tuning);
- ``gatehouse_core.datadir``: where training and quality scripts find the public datasets.

``gateway/`` (the serving app), ``policies/``, ``evaluators/`` and ``tuning/`` sit above it;
``tests/test_layering.py`` enforces the rules in ``docs/ARCHITECTURE.md``.
"""
