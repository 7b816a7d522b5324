"""The pipeline layer: stages over a store, the predictor factory, benchmark ingest, the demo.

It sits between the pure computation (:mod:`geo4d`, :mod:`geo4d_model`), the store
(:mod:`storage`) and orchestration (:mod:`tasks`, :mod:`flows`); no Prefect here.
"""
