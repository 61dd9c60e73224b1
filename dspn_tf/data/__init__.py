"""Input pipelines: set-MNIST (`set_mnist`) and CLEVR (`clevr`).

Each module's `build_dataset(source, split, **options)` returns an unbatched
`tf.data.Dataset` of dicts; see SPEC section 7 for the conventions.
"""
