# What other native modules call of native.codec at C speed (native.store_apply).

cpdef bytes encode_revision(main, sub, bint tombstone=*)
cpdef bytes encode_key_value(key, long long create_revision, long long mod_revision,
                             long long version, value, long long lease)
cpdef tuple decode_key_value(record)
