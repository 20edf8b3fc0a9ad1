"""What a run or sweep leaves for people: the record, summary, TensorBoard extras, figures."""
