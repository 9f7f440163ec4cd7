"""The sweep report that ``experiments/comparison.py`` writes: the jobs and their configurations
(``jobs``), labels a person can read (``labels``), the comparison figure (``figure``) and, for an
Optuna search, the search's own figures and its best trial (``search``)."""
