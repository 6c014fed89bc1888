"""State: what tb_lazy knows about TensorBoards and watchers. ``statefiles`` are its private
records, ``registry`` the TensorBoards serving a folder (started by us or found), ``watchers``
the running watchers, ``infofiles`` TensorBoard's own info files, ``instance`` one TensorBoard."""
