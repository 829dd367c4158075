"""The book (``python -m bnnlib.book``): the notebooks run headless, their records gathered,
"the paper vs this book" built, the HTML site built.

* :mod:`~bnnlib.book.runner`: the command line and papermill;
* :mod:`~bnnlib.book.notebooks`: finding notebooks, their parameters cell and profiles;
* :mod:`~bnnlib.book.record`: what a notebook records (:func:`~bnnlib.book.record.record`);
* :mod:`~bnnlib.book.claims`: the summary rows that rest on committed results (also the
  README's); :mod:`~bnnlib.book.results`: results.json / results.md;
* :mod:`~bnnlib.book.site`: the HTML site (a Jupyter Book); :mod:`~bnnlib.book.tags`: the
  ``hide-input`` tag of bookkeeping cells; :mod:`~bnnlib.book.viz`: figures and widgets.
"""
