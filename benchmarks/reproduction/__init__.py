"""The pieces of ``benchmarks/reproduce.py``: FireCaffe's findings (Iandola et al., CVPR 2016)
measured with fc-caffe at this machine's scale.

- ``config``: the three forms (full, quick, smoke) and the paper's reported figures;
- ``env``: what machine the numbers were measured on;
- ``data``: the Fashion-MNIST LMDBs (made when missing) and the subsets a form trains on;
- ``training``: study 1, batch size and learning rate (``fc-caffe train`` runs, parsed logs);
- ``commbench``: study 2, allreduce time on the virtual cluster, the paper's model, extrapolation;
- ``speedup``: study 3, wall time to a fixed number of samples with 1, 2 and 4 workers;
- ``report`` / ``plots``: REPRODUCTION.md and its PNG figures.
"""
