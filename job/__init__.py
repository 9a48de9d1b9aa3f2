"""ViT-Embedding-DriveData: embed driving-dataset camera images with OpenCLIP, index them with Faiss, map them with UMAP.

Run as ``python -m job {run,embed,index,search,project,publish,models}``; see ``job.cli``.
"""

__version__ = "0.1.0"
