"""ptynb: labelled data, physics, engines and workflows for 3D ptychography."""
__version__ = "0.1.0"
