"""`mmrl report`: tables and figures of every run under a folder, whatever its layout (torch-free).

Modules, in the order the data flows:

- :mod:`~mmrl.report.scan` -- find the run folders (trained, converted, zero-shot; any layout) and
  read run.json / config.yaml / eval/*.json, grid and claim files;
- :mod:`~mmrl.report.group` -- group runs into series and (dataset, shots, seed) cells, add the cells a
  sweep expects but lacks;
- :mod:`~mmrl.report.base2novel`, :mod:`~mmrl.report.fewshot`, :mod:`~mmrl.report.crossdataset` -- one
  module per protocol (numbers, document, CSV, figure), behind the one dispatch table
  :data:`mmrl.report.protocols.PROTOCOLS`;
- :mod:`~mmrl.report.ablation` -- the ablation studies (`mmrl reproduce --vary`): per varied key a
  table and a line plot, per pair a heat map, from each protocol's ``summarise`` + ``ablation_row``;
- :mod:`~mmrl.report.decoupled` -- the same runs under fused / class-only / representation-only logits
  (explicit `mmrl eval --logits` evaluations);
- :mod:`~mmrl.report.stats` (mean, population std), :mod:`~mmrl.report.published` (published.yaml);
- :mod:`~mmrl.report.document` (Markdown / HTML) and :mod:`~mmrl.report.plotting` (figure helpers);
- :mod:`~mmrl.report.build` -- ``collect`` (report.json's data) and ``write_report`` (every file).
"""
from mmrl.report.build import collect, write_report
from mmrl.report.published import load_published

__all__ = ["collect", "write_report", "load_published"]
