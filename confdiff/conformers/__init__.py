"""The conformer domain on the diffusion core.

* ``diffusion``: the conformer diffusion (torsions on the torus, coordinates on the zero-CoM space)
  in its three modes, and its training loss;
* ``generator``: ``ConformerGenerator`` / ``generate()``, checkpoint loading (``load_model``), stereo checks;
* ``likelihood``: log-likelihoods of conformers under the model;
* ``training``: the training run on built ensembles and the release export.

The public API is re-exported lazily by ``confdiff`` itself (``confdiff.generate``, ...).
"""
