"""FireCaffe's data-parallel training: one MPI rank per worker, gradients summed each iteration.

- ``comm``: MPI setup (launcher detection, device per rank, fault handling, start-up checks).
- ``tree`` / ``ps`` / ``pipelined``: the all-reduce algorithms (binomial reduction tree,
  parameter server, segmented pipelined trees); ``allreduce``: the flat gradient buffer, the
  ``--sync`` selection and the overlap of communication with the backward pass.
- ``train_job``: one ``caffe train`` job as data (``TrainJob``, ``parse_gpus``), the one-process
  run (``train_single``) and the guard rails (CPU workers vs cores, blobs vs memory).
- ``launch``: ``train_parallel(job)`` and the self-launch through ``mpiexec``; ``jobcontrol``:
  what holds such a job together (signal relay, no orphans, one error line).
- ``comm_model``: the paper's communication model (Eq. 1-4).

Nothing here imports MPI at import time: ``mpi4py`` is loaded only when a parallel run starts.
"""
