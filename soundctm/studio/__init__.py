"""``soundctm studio``: a local web page and JSON API for audition -> pick -> refine.

- :mod:`~soundctm.studio.service`: the studio without HTTP (one loaded model, an out folder,
  limits, the generate / refine / vary actions and uploads);
- :mod:`~soundctm.studio.jobs`: one job at a time per model, a small queue, progress;
- :mod:`~soundctm.studio.takes`: the history read from the out folder's sidecars, and the
  only-inside-the-out-folder file lookup;
- :mod:`~soundctm.studio.spectrogram`: numpy spectrogram pictures as PNG;
- :mod:`~soundctm.studio.api`: the FastAPI application and the page (``static/``).

Nothing here is imported by ``soundctm --help``. See docs/studio.md.
"""
