"""The web page and the HTTP API over the segmentation pipeline (`vitsam serve`)."""
