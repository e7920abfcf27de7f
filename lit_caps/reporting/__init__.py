"""Rendering measured numbers: Markdown pieces and the report writer (:mod:`.markdown`), the paper's
tables (:mod:`.paper`), and the figures (:mod:`.plots`). Nothing here computes a result: the
experiments (:mod:`lit_caps.experiments`) pass rows and arrays in."""
