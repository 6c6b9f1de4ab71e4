"""Benchmarks: the library behind ``mtlzoo demo``, ``mtlzoo bench`` and ``benchmarks/*.py``.

Every entry point parses its options and makes one call in here; results travel as
DataFrames and dataclasses, and each is written under one stem (``<stem>.md``, ``.csv``,
``_runs.csv``) in ``./results`` unless ``--out`` says otherwise.

Writing results
    ``report``          the output folder convention (``RESULTS``), the one stamp (date,
                        torch, machine, threads, Python, command, grid points run and
                        resumed), Markdown tables and reports, ``write_result``
    ``grid``            ``run_grid``: a resumable grid, one CSV row per point, its file
                        checked; points run in worker processes when asked

Quality: the architectures compared on the same data, beside the papers' numbers
    ``suite``           what both suites share: ``MODELS``, ``MODEL_OPTIONS``, the grid of
                        (model, weighting, setting) points, ``SuiteResult``
    ``synthetic``       MMoE Fig. 4 / PLE Fig. 7 on the synthetic tasks (sizes, data, run,
                        summary); ``mtlzoo demo`` is its demo size; ``check_budget``, the
                        learning-curve check of a size's budget
    ``claims``          the papers' claims on the synthetic tasks, checked from the numbers
    ``census``          MMoE Tables 1-2 / PLE Table 5 on Census-Income (the papers' figures,
                        run, summary); with ``peers``, the peers' models beside ours
    ``peer_census``     the peers' MMoE, PLE and shared-bottom as mtlzoo models behind our
                        encoder, trained and scored as ours (the ``[peers]`` extra)
    ``figures``         the matplotlib figure(s)

Speed: ratios within one run, never timed tests
    ``speed``           train step against its loop version, FLOP/s against a matmul; every
                        architecture (``mtlzoo bench speed``), MMoE/PLE over fresh processes
                        with the CPU targets (``benchmarks/speed.py``), the demo's line
    ``peers``           our MMoE and PLE against torch-rechub's and DeepCTR-Torch's
                        (``mtlzoo bench speed --peers``, the ``[peers]`` extra)
    ``small_batch``     the same at B=64, E=64, T=8 over fresh processes, with the 3x
                        target (``benchmarks/small_batch.py``)
    ``topk_speed``      MMoE with sparse top-k gates against dense softmax gates, E up to 256,
                        FLOPs counted, over fresh processes (``benchmarks/topk_speed.py``)
    ``efficiency``      a large MMoE/PLE step's FLOP/s over a same-run matmul's, default and
                        kept memory, with a per-op profile (``benchmarks/efficiency.py``)
    ``compile_speed``   trainer step eager, compiled, bf16 (``benchmarks/compile_speed.py``)
    ``gpu_speed``       MMoE/PLE on CUDA: fp32, bf16, compiled, loop (``benchmarks/gpu_speed.py``)
    ``task_gradients``  per-task gradients, one vectorised backward against T backward
                        passes (``benchmarks/task_gradients.py``)
    ``text_batching``   real tokens/s of the text recipe's model, ``batching="shuffle"``
                        against ``"by_length"`` (``benchmarks/text_batching.py``)
    ``data_path``       ``Trainer.fit``'s rows/s against a bare loop, fed tensors, a
                        ``datasets.Dataset`` and a stream (``benchmarks/data_path.py``)
"""
