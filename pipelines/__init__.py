"""The Ray stages of adapler (installed as ``adapler_pipelines``): saliency on Ray Data, training
on Ray Train, search on Ray Tune, registration in MLflow, and the driver that chains them. Each
stage runs functions of ``adapler`` (the method); none re-implements it."""
