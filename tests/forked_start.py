"""First of the fork server's preloads (:data:`forked_cli.PRELOAD`): the cyclic garbage
collector paused while the server imports the libraries, as a command does
(:func:`reglab.startup.heavy_imports`); :mod:`forked_warm`, the last, freezes what they
made and turns it back on, so every forked command starts with it on."""

import gc

gc.disable()
