"""Ray Serve application for AdapLeR models (installed as ``adapler_deploy``)."""
