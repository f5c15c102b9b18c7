"""The napari plugin (the ``napari`` extra: napari, npe2, magicgui, qtpy).

``napari.yaml`` is the plugin's npe2 manifest, found through the ``napari.manifest`` entry
point: a dock widget that predicts an image layer with a model file
(:class:`unetseg.napari.widget.PredictWidget`) and a reader that opens the label images
``unetseg predict`` writes as Labels layers with the class names and colours
(:func:`unetseg.napari.reader.get_reader`). What needs neither napari nor Qt is apart:
:mod:`~unetseg.napari.planes` (an image layer's data as model inputs),
:mod:`~unetseg.napari.predict` (the model file chosen, the prediction with its progress) and
:mod:`~unetseg.napari.labels` (class values with their colours and names). Nothing is
imported here, so ``import unetseg.napari`` works without the extra.
"""
