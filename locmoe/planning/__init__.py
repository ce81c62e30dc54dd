"""Planning for serving and scale-out: deployment search, request scheduling, cluster simulation."""
