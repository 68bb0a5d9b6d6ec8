"""What refground uses when a caller names nothing: one place, importable without torch.

* :data:`DEFAULT_METHOD`, of ``Grounder.load()``, ``refground predict`` and ``refground serve``:
  the best method on SynthRef from text alone with the shipped models (README, "Results on
  SynthRef": graph-resolve on the shipped detector's boxes).
* :data:`DEFAULT_DETECTOR`, the proposer that finds candidate boxes when a method needs them
  and none are given: ``auto``, today the shipped ``synthref-det`` CenterNet.
"""

DEFAULT_METHOD = "graph-resolve"
DEFAULT_DETECTOR = "auto"
