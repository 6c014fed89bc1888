"""Detection: has this run written TensorBoard data under a folder yet? ``detect`` waits for it,
``observe`` watches the folder tree (inotify, polling where that can't work), ``rundata`` keeps
what each event file held when the run began, ``tfrecord`` reads event files' framing."""
