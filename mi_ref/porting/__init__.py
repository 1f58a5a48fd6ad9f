"""Help for porting mi-ref to other frameworks: :mod:`mi_ref.porting.pytorch` is a complete small PyTorch port
checked against the golden vectors, with helpers that map mi-ref's parameter names and layouts to PyTorch's.
Frameworks are imported only when used; mi-ref depends on none of them."""
