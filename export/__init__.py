"""The build side of replyrank: train, export and quantize models into a bundle (`pip install replyrank[export]`)."""
