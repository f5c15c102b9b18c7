"""Reports a person reads: one self-contained HTML file each for ``unetseg evaluate``
(:mod:`.evaluation`) and a training run (:mod:`.training`), built from the blocks of
:mod:`.page`. Pictures are embedded as base64 PNG; nothing is loaded from elsewhere."""
