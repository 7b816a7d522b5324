"""Standard file formats of a reconstruction (pure: NumPy arrays in, files in a directory out; no store).

One module per format, each writing with a maintained library where one exists:

* :mod:`geo4d.formats.colmap` — a COLMAP text model (pycolmap) and the frames it refers to;
* :mod:`geo4d.formats.nerfstudio` — nerfstudio's ``transforms.json`` (OpenGL camera axes) and frames;
* :mod:`geo4d.formats.tum` — a TUM trajectory (``timestamp tx ty tz qx qy qz qw``);
* :mod:`geo4d.formats.ply` — a coloured point cloud (plyfile);
* :mod:`geo4d.formats.glb` — points, camera path and frusta in one glTF binary (trimesh);
* :mod:`geo4d.formats.depth` — 16-bit PNG depth maps with a scale sidecar, or a float32 NPZ.

:mod:`geo4d.formats.common` (frames as PNG, depth quantisation, axis changes) and
:mod:`geo4d.formats.points` (the confidence-filtered, budgeted point cloud) are shared. Inputs follow
:mod:`geo4d.cameras`: OpenCV axes, camera-to-world ``world_from_cam``, frame 0 the world frame.
The store-facing side (reading, staging, atomic rename) is :mod:`storage.export`; docs/exports/.
"""
